//! Raw → validated: every semantic rule of the spec language, every violation collected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::diag::{Diagnostic, did_you_mean};
use super::expand::{expand_group, placeholders};
use super::raw::*;
use super::types::*;
use super::units::{SizeError, parse_size};

mod capture;
mod data;
mod limits;
mod models;
mod names;

pub use capture::{MAX_LAYERS, parse_layers};
use capture::{analyses, capture_spec, weights_spec};
use data::data_spec;
use limits::{compute, limits};
use models::model_group;
pub use names::check_repo_id;
use names::{check_license, check_name, parse_output};

/// Validates a raw spec. Returns the spec when there is no error, and every diagnostic
/// (errors and warnings) either way.
pub fn validate(raw: &RawSpec) -> (Option<SweepSpec>, Vec<Diagnostic>) {
    let mut d = Vec::new();
    let name = check_name(&raw.name, &mut d);
    let output = parse_output(&raw.output, &mut d);
    let license = raw
        .license
        .as_deref()
        .and_then(|l| check_license(l, &mut d));
    let models: Vec<ModelGroup> = raw
        .models
        .iter()
        .enumerate()
        .filter_map(|(i, g)| model_group(i, g, &mut d))
        .collect();
    let revisions: BTreeSet<String> = models
        .iter()
        .flat_map(|g| g.axes.iter().filter(|a| a.name == "revision"))
        .flat_map(|a| a.values.clone())
        .collect();
    let data = data_spec(&raw.data, &mut d);
    let capture = raw
        .capture
        .as_ref()
        .and_then(|c| capture_spec(c, &raw.models, &mut d));
    let analyses = analyses(raw, &models, &revisions, &mut d);
    let weights = raw
        .weights
        .as_ref()
        .map(|w| weights_spec(w, &revisions, &mut d));
    let limits = limits(raw.limits.as_ref(), &mut d);
    let compute = compute(raw.compute.as_ref(), &mut d);
    // Expansion warnings (exclude rules matching nothing) belong to validation too.
    let mut instances = 0usize;
    for group in &models {
        instances += expand_group(group, &mut d).len();
    }
    if instances == 0 && !models.is_empty() {
        d.push(
            Diagnostic::error("/models", "the model grid is empty after `exclude`")
                .with_help("loosen the exclude rules"),
        );
    }
    // The section as written: a `capture` with errors of its own is not missing.
    let geometry = raw
        .analyses
        .iter()
        .any(|a| matches!(a, RawAnalysis::UpdateGeometry(_)));
    if raw.capture.is_none() && raw.weights.is_none() && !geometry {
        d.push(
            Diagnostic::error(
                "",
                "nothing to do: the spec has neither `capture` nor `weights` nor `update_geometry`",
            )
            .with_help("add a `capture:` section"),
        );
    }
    let ok = !d.iter().any(|x| x.severity == super::diag::Severity::Error);
    let spec = match (ok, name, output, data) {
        (true, Some(name), Some(output), Some(data)) => Some(SweepSpec {
            name,
            output,
            license,
            models,
            data,
            capture,
            analyses,
            weights,
            limits,
            compute,
        }),
        _ => None,
    };
    (spec, d)
}

/// Semantic checks of the sections that are structurally sound, when others are not (so a
/// spec with a typo in `capture` still gets its `limits` units checked in the same run).
pub fn validate_sections(document: &serde_json::Value, broken_paths: &[String]) -> Vec<Diagnostic> {
    let sound = |path: &str| {
        !broken_paths.iter().any(|b| {
            b == path
                || b.starts_with(&format!("{path}/"))
                || path.starts_with(&format!("{b}/"))
                || b.is_empty()
        })
    };
    let section = |key: &str| document.get(key).filter(|_| sound(&format!("/{key}")));
    let mut d = Vec::new();
    if let Some(serde_json::Value::String(name)) = section("name") {
        check_name(name, &mut d);
    }
    if let Some(serde_json::Value::String(output)) = section("output") {
        parse_output(output, &mut d);
    }
    if let Some(serde_json::Value::String(license)) = section("license") {
        check_license(license, &mut d);
    }
    if let Some(data) =
        section("data").and_then(|v| serde_json::from_value::<RawData>(v.clone()).ok())
    {
        data_spec(&data, &mut d);
    }
    if document.get("limits").is_none_or(|_| sound("/limits")) {
        let raw = document
            .get("limits")
            .and_then(|v| serde_json::from_value::<RawLimits>(v.clone()).ok());
        limits(raw.as_ref(), &mut d);
    }
    if let Some(raw) =
        section("compute").and_then(|v| serde_json::from_value::<RawCompute>(v.clone()).ok())
    {
        compute(Some(&raw), &mut d);
    }
    if let Some(serde_json::Value::Array(groups)) = document.get("models") {
        for (i, group) in groups.iter().enumerate() {
            // A misspelt family does not stop the axis and placeholder checks of its group.
            let family_path = format!("/models/{i}/family");
            let only_family = broken_paths
                .iter()
                .filter(|b| {
                    b.starts_with(&format!("/models/{i}/")) || **b == format!("/models/{i}")
                })
                .all(|b| *b == family_path);
            let mut group = group.clone();
            if only_family && let Some(map) = group.as_object_mut() {
                map.remove("family");
            }
            if only_family
                && let Ok(raw) = serde_json::from_value::<RawModelGroup>(group)
                && let Some(group) = model_group(i, &raw, &mut d)
            {
                expand_group(&group, &mut d);
            }
        }
    }
    d
}
