//! Spectra recomputed from their input artifacts (deep): a Gram accumulator fed in the run's
//! batch chunks, its singular values, mean and metrics compared with the stored spectrum and
//! the record within the manifest's tolerance.

use std::collections::HashSet;

use super::deep::{DeepOutcome, Fetcher, activation_rows};
use super::report::CheckKind;
use crate::analysis::{GramAccumulator, Spectrum};
use crate::ledger::{Manifest, Record, max_abs};

/// Fetches a spectrum's input artifacts and its file (all checked like any file), recomputes
/// the spectrum from the artifacts and compares it with the file and the recorded metrics.
pub(super) async fn check_spectrum(
    fetcher: &Fetcher,
    spectrum: &Record,
    inputs: &[Record],
    manifest: Option<&Manifest>,
    batch_rows: Option<usize>,
    out: &mut DeepOutcome,
) {
    let mut gram: Option<GramAccumulator> = None;
    let mut complete = inputs.len() == spectrum.inputs.len();
    let mut dtype = "f32".to_owned();
    for artifact in inputs {
        for file in &artifact.files {
            let Some((bytes, parsed)) = fetcher.fetch_checked(artifact, file, true, out).await
            else {
                complete = false;
                continue;
            };
            if let Some(d) = artifact.params["dtype"].as_str() {
                d.clone_into(&mut dtype);
            }
            let Some((values, rows, width)) = activation_rows(&bytes, &parsed) else {
                complete = false;
                continue;
            };
            drop(bytes);
            let acc = gram.get_or_insert_with(|| GramAccumulator::new(width));
            let chunk = batch_rows.unwrap_or(rows).max(1);
            let mut pushed = Ok(());
            for start in (0..rows).step_by(chunk) {
                let n = chunk.min(rows - start);
                pushed = acc.push_rows(&values[start * width..(start + n) * width], n, width);
                if pushed.is_err() {
                    break;
                }
            }
            if let Err(e) = pushed {
                out.fail(CheckKind::Spectra, artifact, &file.path, e.to_string());
                complete = false;
            }
        }
    }
    for file in &spectrum.files {
        let Some((bytes, _)) = fetcher.fetch_checked(spectrum, file, true, out).await else {
            continue;
        };
        out.checked.push((CheckKind::Spectra, 1));
        if !complete {
            out.fail(
                CheckKind::Spectra,
                spectrum,
                &file.path,
                "cannot recompute: an input artifact is missing or damaged".into(),
            );
            continue;
        }
        let Some(acc) = gram.take() else {
            continue;
        };
        let top_k = spectrum.params["top_k"].as_u64().unwrap_or(64) as usize;
        let tol = tolerance(manifest, spectrum.device.as_deref(), &dtype);
        let recorded = spectrum.metrics.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let stored = Spectrum::from_safetensors(&bytes).map_err(|e| e.to_string())?;
            let fresh = acc.finish(top_k).map_err(|e| e.to_string())?;
            compare_spectra(&stored, &fresh, recorded.as_ref(), tol)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(message) = outcome {
            out.fail(CheckKind::Spectra, spectrum, &file.path, message);
        }
    }
}

fn compare_spectra(
    stored: &Spectrum,
    fresh: &Spectrum,
    recorded: Option<&serde_json::Value>,
    tol: f64,
) -> Result<(), String> {
    if stored.rows != fresh.rows || stored.width() != fresh.width() {
        return Err(format!(
            "the file has {} rows × {}, the artifacts give {} × {}",
            stored.rows,
            stored.width(),
            fresh.rows,
            fresh.width()
        ));
    }
    for (name, a, b) in [
        (
            "raw.singular_values",
            &stored.raw.singular_values,
            &fresh.raw.singular_values,
        ),
        (
            "centred.singular_values",
            &stored.centred.singular_values,
            &fresh.centred.singular_values,
        ),
        ("mean", &stored.mean, &fresh.mean),
    ] {
        let scale = a.iter().chain(b.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
        if let Some((i, (x, y))) = a
            .iter()
            .zip(b.iter())
            .enumerate()
            .find(|(_, (x, y))| (*x - *y).abs() > tol * scale)
        {
            return Err(format!(
                "`{name}`[{i}] is {x} in the file, {y} recomputed (relative tolerance {tol:e})"
            ));
        }
    }
    let fresh_metrics = serde_json::to_value(fresh.metrics()).unwrap_or_default();
    let Some(recorded) = recorded else {
        return Err("the record has no metrics".into());
    };
    let scale = max_abs(&fresh_metrics);
    compare_json(recorded, &fresh_metrics, tol, scale, "metrics")
}

/// Compares recorded and recomputed metrics: integers exactly, floats within `tol` relative
/// to the larger of the two values, with a floor of `tol × scale` for values near zero (small
/// eigenvalues carry the rounding of the largest ones).
fn compare_json(
    recorded: &serde_json::Value,
    fresh: &serde_json::Value,
    tol: f64,
    scale: f64,
    at: &str,
) -> Result<(), String> {
    use serde_json::Value;
    match (recorded, fresh) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: HashSet<&String> = a.keys().chain(b.keys()).collect();
            let mut keys: Vec<&String> = keys.into_iter().collect();
            keys.sort();
            for key in keys {
                let path = format!("{at}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => compare_json(x, y, tol, scale, &path)?,
                    _ => {
                        return Err(format!(
                            "`{path}` is in only one of record and recomputation"
                        ));
                    }
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "`{at}` has {} values recorded, {} recomputed",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare_json(x, y, tol, scale, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_u64(), y.as_u64()) {
                (Some(p), Some(q)) => p == q,
                _ => {
                    let (p, q) = (
                        x.as_f64().unwrap_or(f64::NAN),
                        y.as_f64().unwrap_or(f64::NAN),
                    );
                    (p - q).abs() <= tol * p.abs().max(q.abs()).max(scale * 1e-6)
                        || (p - q).abs() <= tol * scale
                }
            };
            if same {
                Ok(())
            } else {
                Err(format!(
                    "`{at}` is {x} in the record, {y} recomputed (relative tolerance {tol:e})"
                ))
            }
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("`{at}` is {a} in the record, {b} recomputed")),
    }
}

/// The relative tolerance of metrics recomputed from artifacts stored in `dtype`.
fn tolerance(manifest: Option<&Manifest>, device: Option<&str>, dtype: &str) -> f64 {
    let class = match device {
        Some(d) if d.starts_with("cuda") => "cuda",
        _ => "cpu",
    };
    let recorded = manifest
        .and_then(|m| {
            m.tolerances
                .iter()
                .find(|t| t.device == class && t.dtype == dtype)
        })
        .map_or(1e-6, |t| t.relative);
    // Spectra are accumulated from the f32 activations before they are stored; from a
    // half-precision artifact the recomputation sees rounded values.
    let storage = match dtype {
        "f16" => 1e-2,
        "bf16" => 2e-2,
        _ => 0.0,
    };
    recorded.max(storage).max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_compare_within_tolerance_and_integers_exactly() {
        let a = serde_json::json!({"k90": 3, "spectral_norm": 10.0, "top": [100.0, 1e-12]});
        let b = serde_json::json!({"k90": 3, "spectral_norm": 10.0 + 1e-10, "top": [100.0, 2e-12]});
        assert!(compare_json(&a, &b, 1e-9, 100.0, "m").is_ok());
        let c = serde_json::json!({"k90": 4, "spectral_norm": 10.0, "top": [100.0, 1e-12]});
        assert!(compare_json(&a, &c, 1e-9, 100.0, "m").is_err());
        let d = serde_json::json!({"k90": 3, "spectral_norm": 10.1, "top": [100.0, 1e-12]});
        let err = compare_json(&a, &d, 1e-9, 100.0, "m").unwrap_err();
        assert!(err.contains("m.spectral_norm"), "{err}");
    }
}
