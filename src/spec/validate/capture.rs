//! `capture:` hooks and layers, `analyses:` and `weights:`.

use super::*;

pub(super) fn capture_spec(
    raw: &RawCapture,
    models: &[RawModelGroup],
    d: &mut Vec<Diagnostic>,
) -> Option<CaptureSpec> {
    let mut ok = true;
    let mut hooks = Vec::new();
    for (i, hook) in raw.hooks.iter().enumerate() {
        let hook = *hook;
        if hooks.contains(&hook) {
            d.push(Diagnostic::warning(
                format!("/capture/hooks/{i}"),
                format!("hook `{}` is listed twice", hook.name()),
            ));
            continue;
        }
        if hook == Hook::ResidMid && models.iter().any(|m| m.family == Some(RawFamily::GptNeox)) {
            d.push(
                Diagnostic::error(format!("/capture/hooks/{i}"), "`hook_resid_mid` does not exist in GPT-NeoX (Pythia) blocks")
                    .with_help("Pythia's blocks are parallel (attention and MLP read the same input); capture `hook_attn_out` and `hook_resid_pre` instead"),
            );
            ok = false;
        }
        hooks.push(hook);
    }
    let layers = match &raw.layers {
        None => LayerSelection::All,
        Some(RawLayers::List(list)) => {
            for (i, &index) in list.iter().enumerate() {
                if index.unsigned_abs() >= u64::from(MAX_LAYERS) + u64::from(index < 0) {
                    d.push(past_any_model(
                        &format!("/capture/layers/{i}"),
                        &index.to_string(),
                    ));
                    ok = false;
                }
            }
            LayerSelection::Indices(list.clone())
        }
        Some(RawLayers::Text(text)) => match parse_layers(text) {
            Ok(layers) => {
                if let LayerSelection::Range { start, end, .. } = layers
                    && end.unwrap_or(start.saturating_add(1)) > MAX_LAYERS
                {
                    d.push(past_any_model("/capture/layers", text.trim()));
                    ok = false;
                }
                layers
            }
            Err(message) => {
                d.push(Diagnostic::error("/capture/layers", message).with_help(
                    "write `all`, a list like `[0, 3, -1]`, or a range like `\"0..12:2\"`",
                ));
                ok = false;
                LayerSelection::All
            }
        },
    };
    let dtype = match raw.dtype.unwrap_or(RawDtype::F32) {
        RawDtype::F32 => Dtype::F32,
        RawDtype::F16 => Dtype::F16,
        RawDtype::Bf16 => Dtype::Bf16,
    };
    ok.then_some(CaptureSpec {
        hooks,
        layers,
        dtype,
        pool: raw.pool.unwrap_or_default(),
    })
}

/// The deepest model a layer selection may name: layers `0..MAX_LAYERS`.
///
/// No released language model has more than about 130 blocks (Llama 3.1 405B: 126, PaLM 540B:
/// 118, Megatron-Turing NLG 530B: 105); research models reach 1,000 layers in all (DeepNet's
/// encoder and decoder, 500 each). A selection past 1,024 is a slip (`"0..100000000"`), and
/// refusing it keeps a plan of a model whose depth is not known offline from materialising
/// nodes for layers no model has.
pub const MAX_LAYERS: u32 = 1024;

fn past_any_model(path: &str, written: &str) -> Diagnostic {
    Diagnostic::error(
        path,
        format!("layer selection `{written}` reaches past layer {MAX_LAYERS}, deeper than any real model"),
    )
    .with_help(format!(
        "no released model has more than about 130 layers; write `all` or an open range like `\"4..\"` to run to the model's last layer, or indices below {MAX_LAYERS}"
    ))
}

/// Parses `all`, `start..end`, `start..end:step`, `start..` (to the last layer).
pub fn parse_layers(text: &str) -> Result<LayerSelection, String> {
    let text = text.trim();
    if text == "all" {
        return Ok(LayerSelection::All);
    }
    let (range, step) = match text.split_once(':') {
        Some((r, s)) => (r, Some(s)),
        None => (text, None),
    };
    let Some((start, end)) = range.split_once("..") else {
        return Err(format!("`{text}` is not a layer selection"));
    };
    let number = |s: &str, what: &str| -> Result<u32, String> {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{what} `{s}` of range `{text}` is not a non-negative integer"))
    };
    let start = if start.trim().is_empty() {
        0
    } else {
        number(start, "start")?
    };
    let end = if end.trim().is_empty() {
        None
    } else {
        Some(number(end, "end")?)
    };
    let step = match step {
        Some(s) => number(s, "step")?,
        None => 1,
    };
    if step == 0 {
        return Err(format!("step of range `{text}` is 0"));
    }
    if let Some(end) = end
        && end <= start
    {
        return Err(format!(
            "range `{text}` is empty (the end is exclusive and must exceed the start)"
        ));
    }
    Ok(LayerSelection::Range { start, end, step })
}

pub(super) fn analyses(
    raw: &RawSpec,
    models: &[ModelGroup],
    revisions: &BTreeSet<String>,
    d: &mut Vec<Diagnostic>,
) -> Vec<Analysis> {
    let mut out = Vec::new();
    for (i, analysis) in raw.analyses.iter().enumerate() {
        let path = format!("/analyses/{i}");
        if let RawAnalysis::UpdateGeometry(g) = analysis {
            if out.iter().any(|a| matches!(a, Analysis::UpdateGeometry(_))) {
                d.push(
                    Diagnostic::error(
                        format!("{path}/update_geometry"),
                        "`update_geometry` is listed twice",
                    )
                    .with_help("list every module and size in one `update_geometry`"),
                );
                continue;
            }
            if let Some(spec) = update_geometry_spec(&path, g, raw, d) {
                out.push(Analysis::UpdateGeometry(spec));
            }
            continue;
        }
        if raw.capture.is_none() {
            d.push(Diagnostic::error(
                &path,
                "analyses need captured activations, but the spec has no `capture`",
            ));
            continue;
        }
        match analysis {
            RawAnalysis::UpdateGeometry(_) => {}
            RawAnalysis::Spectrum(s) => out.push(Analysis::Spectrum {
                top_k: s.top_k.unwrap_or(64),
            }),
            RawAnalysis::Overlap(o) => {
                let k = match &o.k {
                    RawOverlapK::List(list) => {
                        if list.contains(&0) {
                            d.push(Diagnostic::error(
                                format!("{path}/overlap/k"),
                                "`k` values must be at least 1",
                            ));
                        }
                        OverlapK::Sizes(list.clone())
                    }
                    RawOverlapK::Word(w) if w == "srank" => OverlapK::Srank,
                    RawOverlapK::Word(w) => {
                        d.push(
                            Diagnostic::error(
                                format!("{path}/overlap/k"),
                                format!("unknown `k` value `{w}`"),
                            )
                            .with_help("write a list of sizes like `[5, 10, 20]`, or `srank`"),
                        );
                        continue;
                    }
                };
                let between = match o.between {
                    RawBetween::Revision => Between::Revision,
                    RawBetween::Model => Between::Model,
                };
                let candidates: Vec<String> = match between {
                    Between::Revision => revisions.iter().cloned().collect(),
                    Between::Model => models
                        .iter()
                        .flat_map(|g| expand_group(g, &mut Vec::new()))
                        .map(|m| m.source.to_string())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                };
                if !models.is_empty() && !candidates.contains(&o.base) {
                    let what = if between == Between::Revision {
                        "revision"
                    } else {
                        "model"
                    };
                    let mut e = Diagnostic::error(
                        format!("{path}/overlap/base"),
                        format!("base `{}` is not a {what} of this sweep", o.base),
                    );
                    e = match did_you_mean(&o.base, candidates.iter().map(String::as_str)) {
                        Some(hint) => e.with_help(hint),
                        None => e.with_help(format!(
                            "choose one of {}",
                            candidates
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    };
                    d.push(e);
                }
                out.push(Analysis::Overlap {
                    between,
                    base: o.base.clone(),
                    k,
                });
            }
        }
    }
    out
}

/// `update_geometry`: module patterns, sizes (integers ≥ 1 and `srank`), base vectors; the
/// spec must name an adapter somewhere.
fn update_geometry_spec(
    path: &str,
    raw: &RawUpdateGeometry,
    spec: &RawSpec,
    d: &mut Vec<Diagnostic>,
) -> Option<UpdateGeometrySpec> {
    use crate::analysis::SubspaceChoice;
    let path = format!("{path}/update_geometry");
    let before = d.len();
    if !spec.models.iter().any(|g| g.adapter.is_some()) {
        d.push(
            Diagnostic::error(&path, "`update_geometry` needs adapters, but no model group names one")
                .with_help("add `adapter: {repo: ..., subfolder: ...}` to the model group of the adapters' base model"),
        );
    }
    for (i, module) in raw.modules.iter().enumerate() {
        if module.trim().is_empty() {
            d.push(Diagnostic::error(
                format!("{path}/modules/{i}"),
                "empty module pattern",
            ));
        }
    }
    let base_vectors = raw.base_vectors.unwrap_or(DEFAULT_BASE_VECTORS);
    let written = raw.k.clone().unwrap_or_else(|| {
        [5, 10, 20]
            .into_iter()
            .map(RawScalar::Integer)
            .chain([RawScalar::String("srank".into())])
            .collect()
    });
    let mut k = Vec::new();
    for (j, value) in written.iter().enumerate() {
        let at = format!("{path}/k/{j}");
        let choice = match value {
            RawScalar::Integer(n) if *n >= 1 => SubspaceChoice::Fixed(*n as usize),
            RawScalar::String(w) if w == "srank" => SubspaceChoice::SRANK,
            other => {
                d.push(
                    Diagnostic::error(&at, format!("`{}` is not a subspace size", super::models::scalar_text(other)))
                        .with_help("write integers of at least 1, or `srank` (the update's rounded stable rank)"),
                );
                continue;
            }
        };
        if let SubspaceChoice::Fixed(n) = choice
            && n > base_vectors as usize
        {
            d.push(
                Diagnostic::error(&at, format!("k = {n} exceeds the {base_vectors} singular vectors kept of each base weight"))
                    .with_help(format!("raise `base_vectors` to at least {n}, or use a smaller k")),
            );
        }
        if k.contains(&choice) {
            d.push(Diagnostic::warning(
                &at,
                format!("k = {choice} is listed twice"),
            ));
            continue;
        }
        k.push(choice);
    }
    (d.len() == before
        || d[before..]
            .iter()
            .all(|x| x.severity == crate::spec::Severity::Warning))
    .then(|| UpdateGeometrySpec {
        modules: raw.modules.clone(),
        k,
        base_vectors,
    })
}

pub(super) fn weights_spec(
    raw: &RawWeights,
    revisions: &BTreeSet<String>,
    d: &mut Vec<Diagnostic>,
) -> WeightsSpec {
    for (i, module) in raw.modules.iter().enumerate() {
        if module.trim().is_empty() {
            d.push(Diagnostic::error(
                format!("/weights/modules/{i}"),
                "empty module pattern",
            ));
        }
    }
    if let Some(base) = &raw.delta_from
        && !revisions.is_empty()
        && !revisions.contains(base)
    {
        let mut e = Diagnostic::error(
            "/weights/delta_from",
            format!("`delta_from` revision `{base}` is not a revision of this sweep"),
        );
        if let Some(hint) = did_you_mean(base, revisions.iter().map(String::as_str)) {
            e = e.with_help(hint);
        } else {
            e = e.with_help(
                "add it to the models' `revision` list, so its weights are pinned like the others",
            );
        }
        d.push(e);
    }
    WeightsSpec {
        modules: raw.modules.clone(),
        delta_from: raw.delta_from.clone(),
    }
}
