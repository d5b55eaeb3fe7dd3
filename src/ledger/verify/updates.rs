//! Update geometry recomputed (deep): an `update_geometry` node's alignments are recomputed from
//! the base's singular vectors (its `base_svd` input's file) and the update's own (its file),
//! and its spectrum metrics from the update's stored singular values; both must equal what the
//! record says within the manifest's relative tolerance (the same f64 arithmetic: in practice
//! exactly).

use super::deep::{DeepOutcome, Fetcher};
use super::report::CheckKind;
use crate::analysis::{SpectrumMetrics, SubspaceChoice, update_geometry};
use crate::ledger::Record;
use crate::ledger::updates::{UpdateNodeMetrics, read_svds};

/// Relative tolerance of the recomputed figures.
const TOLERANCE: f64 = 1e-9;

/// Fetches the node's base SVD and its own file (both checked like any file) and compares.
pub(super) async fn check_update(
    fetcher: &Fetcher,
    update: &Record,
    base: Option<&Record>,
    out: &mut DeepOutcome,
) {
    let Some(file) = update.files.first() else {
        return;
    };
    let base_bytes = match base.and_then(|b| b.files.first().map(|f| (b, f))) {
        Some((base, base_file)) => fetcher
            .fetch_checked(base, base_file, true, out)
            .await
            .map(|(bytes, _)| bytes),
        None => None,
    };
    let Some((bytes, _)) = fetcher.fetch_checked(update, file, true, out).await else {
        return;
    };
    out.checked.push((CheckKind::Spectra, 1));
    let Some(base_bytes) = base_bytes else {
        out.fail(
            CheckKind::Spectra,
            update,
            &file.path,
            "cannot recompute: its base_svd input is missing or damaged".into(),
        );
        return;
    };
    let record = update.clone();
    let outcome = tokio::task::spawn_blocking(move || recompute(&record, &base_bytes, &bytes))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(message) = outcome {
        out.fail(CheckKind::Spectra, update, &file.path, message);
    }
}

fn recompute(record: &Record, base_bytes: &[u8], bytes: &[u8]) -> Result<(), String> {
    let base = read_svds(base_bytes).map_err(|e| format!("base_svd file: {e}"))?;
    let updates = read_svds(bytes)?;
    let metrics: UpdateNodeMetrics = record
        .metrics
        .clone()
        .ok_or("no metrics recorded")
        .and_then(|m| serde_json::from_value(m).map_err(|_| "metrics are not an update's"))?;
    let k: Vec<SubspaceChoice> =
        serde_json::from_value(record.params["k"].clone()).map_err(|e| format!("params.k: {e}"))?;
    let close = |got: f64, recorded: f64| {
        (got - recorded).abs() <= TOLERANCE * recorded.abs().max(f64::MIN_POSITIVE)
    };
    for matrix in &metrics.matrices {
        let what = &matrix.tensor;
        let update = updates
            .get(what)
            .ok_or_else(|| format!("`{what}` is recorded but not in the file"))?;
        let base_svd = base
            .get(what)
            .ok_or_else(|| format!("`{what}` is not in the base's file"))?;
        let fresh = SpectrumMetrics::from_singular_values(
            &update.singular_values,
            matrix.metrics.top_eigenvalues.len(),
        );
        if !close(fresh.stable_rank, matrix.metrics.stable_rank)
            || !close(fresh.effective_rank, matrix.metrics.effective_rank)
            || fresh.k90 != matrix.metrics.k90
            || fresh.k99 != matrix.metrics.k99
        {
            return Err(format!(
                "`{what}`: the spectrum metrics do not recompute from its singular values"
            ));
        }
        let geometry =
            update_geometry(base_svd, update, &k).map_err(|e| format!("`{what}`: {e}"))?;
        let same = geometry.alignments.len() == matrix.geometry.alignments.len()
            && geometry
                .alignments
                .iter()
                .zip(&matrix.geometry.alignments)
                .all(|(a, b)| {
                    a.k == b.k && close(a.p_left, b.p_left) && close(a.p_right, b.p_right)
                });
        if !same {
            return Err(format!(
                "`{what}`: the recorded p_left/p_right do not recompute from the stored singular vectors"
            ));
        }
    }
    Ok(())
}
