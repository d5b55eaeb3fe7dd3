//! Weight spectroscopy in a run: one `weight_spectrum` node per (model revision, module
//! pattern), with one result per matched matrix inside (every layer, and for a fused QKV —
//! GPT-NeoX's `query_key_value`, GPT-2's `c_attn` — also its query, key and value parts).
//! Every matrix is read as d_out × d_in, whatever the family stores ([`crate::model::MatrixLayout`]).
//!
//! Checkpoint files are read one tensor at a time: the safetensors header first, then only the
//! bytes of the tensors at hand (and of the same tensors in the base revision for a delta), one
//! matrix per rayon thread at a time, so memory stays near that many matrices whatever the
//! model's size.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::{PinnedModel, RunError};
use crate::analysis::{self, SvdMethod, WeightMatrix, WeightSpectrum, match_weight_modules};
use crate::ledger::tables::{MatrixResult, WeightNodeMetrics};
use crate::plan::{Node, Params, Plan};
use crate::spec::{Diagnostic, ModelInstance, SweepSpec};
use bytes::Bytes;

/// Eigenvalues kept in each matrix's metrics (`top_eigenvalues`).
pub const WEIGHT_TOP_K: usize = 16;

/// Metadata key of a weight-spectrum node's safetensors file.
pub const WEIGHTS_FORMAT: &str = "hubsweep.weights";

/// Where one tensor lives in a checkpoint.
#[derive(Debug, Clone)]
pub(super) struct TensorEntry {
    file: PathBuf,
    dtype: String,
    pub(super) shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// The tensors of a checkpoint, from the safetensors headers alone (read by the same checked
/// parser as `verify --deep`: a checkpoint is input from anywhere).
pub(super) fn checkpoint_index(
    files: &[PathBuf],
) -> Result<BTreeMap<String, TensorEntry>, RunError> {
    use crate::ledger::verify::header;
    let mut index = BTreeMap::new();
    for path in files {
        let io = |source| RunError::Io {
            path: path.clone(),
            source,
        };
        let invalid =
            |e: header::HeaderError| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        let mut file = fs_err::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut prefix = vec![0u8; 8];
        file.read_exact(&mut prefix).map_err(io)?;
        let needed = header::needed(&prefix).map_err(invalid)?;
        prefix.resize(usize::try_from(needed).unwrap_or(usize::MAX), 0);
        file.read_exact(&mut prefix[8..]).map_err(io)?;
        let parsed = header::parse(&prefix, file_len).map_err(invalid)?;
        for tensor in parsed.tensors {
            let shape = tensor.shape.iter().map(|&d| d as usize).collect();
            index.insert(
                tensor.name,
                TensorEntry {
                    file: path.clone(),
                    dtype: tensor.dtype,
                    shape,
                    start: parsed.data_start + tensor.offsets.0,
                    end: parsed.data_start + tensor.offsets.1,
                },
            );
        }
    }
    Ok(index)
}

/// Reads one tensor as f64 (exact for every float dtype a checkpoint stores).
pub(super) fn read_tensor(key: &str, entry: &TensorEntry) -> Result<Vec<f64>, RunError> {
    let invalid = |reason: String| RunError::Io {
        path: entry.file.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    };
    let io = |source| RunError::Io {
        path: entry.file.clone(),
        source,
    };
    let width = match entry.dtype.as_str() {
        "F64" => 8,
        "F32" => 4,
        "F16" | "BF16" => 2,
        other => return Err(invalid(format!("tensor `{key}` has dtype `{other}`"))),
    };
    let count: usize = entry.shape.iter().product();
    if entry.end - entry.start != (count * width) as u64 {
        return Err(invalid(format!(
            "tensor `{key}` has a byte range of the wrong size"
        )));
    }
    let mut file = fs_err::File::open(&entry.file).map_err(io)?;
    file.seek(SeekFrom::Start(entry.start)).map_err(io)?;
    let mut bytes = vec![0u8; count * width];
    file.read_exact(&mut bytes).map_err(io)?;
    let chunks = bytes.chunks_exact(width);
    Ok(match entry.dtype.as_str() {
        "F64" => chunks
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
        "F32" => chunks
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        "F16" => chunks
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        _ => chunks
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
    })
}

/// Matrix keys of a checkpoint (2-D tensors; norms and biases are 1-D and have no spectrum).
pub(super) fn matrix_keys(index: &BTreeMap<String, TensorEntry>) -> Vec<&str> {
    index
        .iter()
        .filter(|(_, e)| e.shape.len() == 2)
        .map(|(k, _)| k.as_str())
        .collect()
}

/// Checks every module pattern against the pinned checkpoints' keys, before anything runs: a
/// pattern that matches no weight matrix of any model is an error at `/weights/modules/N` (in a
/// sweep over several families a pattern may fit only some of them).
pub fn check_modules<'a>(
    spec: &SweepSpec,
    pinned: impl IntoIterator<Item = &'a PinnedModel>,
) -> Result<Vec<Diagnostic>, RunError> {
    let Some(weights) = &spec.weights else {
        return Ok(Vec::new());
    };
    let mut keys = std::collections::BTreeSet::new();
    for model in pinned {
        let index = checkpoint_index(&model.files.weights)?;
        keys.extend(matrix_keys(&index).into_iter().map(str::to_owned));
    }
    let mut diagnostics = Vec::new();
    for (n, pattern) in weights.modules.iter().enumerate() {
        if let Err(analysis::AnalysisError::UnmatchedModules { patterns }) = match_weight_modules(
            keys.iter().map(String::as_str),
            std::slice::from_ref(pattern),
        ) {
            let mut diagnostic = Diagnostic::error(
                format!("/weights/modules/{n}"),
                format!("module pattern `{pattern}` matches no weight matrix of any model"),
            );
            if let Some(suggestion) = patterns.first().and_then(|p| p.suggestion.clone()) {
                diagnostic = diagnostic.with_help(format!("did you mean `{suggestion}`?"));
            }
            diagnostics.push(diagnostic);
        }
    }
    Ok(diagnostics)
}

/// The inputs of one weight-spectrum node.
#[derive(Debug, Clone)]
pub struct WeightJob {
    /// The node's label, for errors.
    pub label: String,
    /// The model revision whose weights are decomposed.
    pub model: PinnedModel,
    /// The module pattern.
    pub module: String,
    /// For a delta: the base revision's name and its pinned model.
    pub base: Option<(String, PinnedModel)>,
}

impl WeightJob {
    /// The job of a `weight_spectrum` node of `plan` (`None` for other kinds).
    pub fn of(plan: &Plan, node: &Node, pinned: &[(ModelInstance, PinnedModel)]) -> Option<Self> {
        let Params::WeightSpectrum {
            model,
            module,
            delta_from,
        } = &node.params
        else {
            return None;
        };
        Some(Self {
            label: plan.label(node),
            model: pinned[*model as usize].1.clone(),
            module: module.clone(),
            base: delta_from.map(|b| {
                let (instance, model) = &pinned[b as usize];
                (instance.revision.clone(), model.clone())
            }),
        })
    }
}

/// One matrix to decompose: its part name (`None` for the whole matrix), values and rows.
pub(super) type MatrixPart = (Option<&'static str>, Vec<f64>, usize);

/// A checkpoint matrix of `module` as the matrices it is analysed as: read as d_out × d_in
/// (GPT-2's Conv1D weights are stored [in, out]), and for a fused QKV weight also its query,
/// key and value parts. Returns the columns and the parts, the whole matrix first.
pub(super) fn matrix_parts(
    config: &crate::model::ModelConfig,
    module: &str,
    data: Vec<f64>,
    rows: usize,
    cols: usize,
) -> Result<(usize, Vec<MatrixPart>), analysis::AnalysisError> {
    let layout = config.family.matrix_layout(module);
    let (data, rows, cols) = layout.to_out_in(data, rows, cols);
    let groups = layout
        .fused_qkv
        .map(|f| f.groups(config.n_heads, config.head_dim))
        .filter(|(groups, group_rows)| rows == 3 * groups * group_rows);
    let mut parts: Vec<MatrixPart> = Vec::new();
    if let Some((groups, group_rows)) = groups {
        let split = analysis::split_fused_qkv(&data, groups, group_rows, cols)?;
        let part_rows = split.rows;
        parts.push((Some("query"), split.query, part_rows));
        parts.push((Some("key"), split.key, part_rows));
        parts.push((Some("value"), split.value, part_rows));
    }
    parts.insert(0, (None, data, rows));
    Ok((cols, parts))
}

/// Computes one weight-spectrum node: its ledger metrics and the bytes of its safetensors
/// file. Runs on the calling thread (call it from `spawn_blocking`). Matrices are read in
/// batches of one per rayon thread and decomposed in parallel on the rayon pool, each on one
/// thread (the faster layout, `docs/analysis.md`), so memory stays near one matrix per thread.
/// (Its length is that batch loop: read, split fused QKV, decompose, record, in order.)
pub fn compute_node(job: &WeightJob) -> Result<(WeightNodeMetrics, Vec<u8>), RunError> {
    let failed = |reason: String| RunError::Capture {
        label: job.label.clone(),
        reason,
    };
    let analysis = |source| RunError::Analysis {
        label: job.label.clone(),
        source,
    };
    let this = &job.model;
    let index = checkpoint_index(&this.files.weights)?;
    let base = match &job.base {
        Some((_, base)) => Some(checkpoint_index(&base.files.weights)?),
        None => None,
    };
    // A pattern may match only some models of a mixed sweep (`check_modules` refuses one that
    // matches none): here it selects nothing, and the node records no matrix.
    let matches = match match_weight_modules(matrix_keys(&index), std::slice::from_ref(&job.module))
    {
        Ok(matches) => matches,
        Err(analysis::AnalysisError::UnmatchedModules { .. }) => Vec::new(),
        Err(e) => return Err(analysis(e)),
    };
    let method = SvdMethod::SvdF64;
    let mut matrices = Vec::new();
    let mut tensors: Vec<(String, Vec<f64>)> = Vec::new();
    let batch = rayon::current_num_threads().max(1);
    for chunk in matches.chunks(batch) {
        // Each matched matrix as its parts: the whole matrix, then (fused QKV) q, k, v.
        let mut loaded: Vec<(&analysis::WeightMatch, usize, Vec<MatrixPart>)> = Vec::new();
        for found in chunk {
            let entry = &index[&found.key];
            let (rows, cols) = (entry.shape[0], entry.shape[1]);
            let weight = read_tensor(&found.key, entry)?;
            let base_weight = match &base {
                Some(base) => {
                    let entry = base.get(&found.key).ok_or_else(|| {
                        failed(format!("the base revision has no weight `{}`", found.key))
                    })?;
                    Some(read_tensor(&found.key, entry)?)
                }
                None => None,
            };
            // A delta of the fused weight splits the same way as the weight: the difference
            // first.
            let data: Vec<f64> = match &base_weight {
                Some(b) if b.len() == weight.len() => {
                    weight.iter().zip(b).map(|(w, b)| w - b).collect()
                }
                Some(b) => {
                    return Err(failed(format!(
                        "`{}` has {} values here and {} in the base revision",
                        found.key,
                        weight.len(),
                        b.len()
                    )));
                }
                None => weight,
            };
            let (cols, parts) =
                matrix_parts(&this.config, &found.module, data, rows, cols).map_err(analysis)?;
            loaded.push((found, cols, parts));
        }
        let views = loaded
            .iter()
            .flat_map(|(_, cols, parts)| {
                parts
                    .iter()
                    .map(move |(_, values, rows)| WeightMatrix::new(values, *rows, *cols))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(analysis)?;
        let mut spectra = analysis::weight_spectra(&views, method).into_iter();
        for (found, _, parts) in &loaded {
            for (part, _, _) in parts {
                let spectrum: WeightSpectrum = spectra
                    .next()
                    .ok_or_else(|| failed(format!("`{}`: no spectrum", found.key)))?
                    .map_err(|source| RunError::Analysis {
                        label: format!("{}, `{}`", job.label, found.key),
                        source,
                    })?;
                let tensor = match part {
                    Some(part) => format!("{}.{part}", found.key),
                    None => found.key.clone(),
                };
                matrices.push(MatrixResult {
                    key: found.key.clone(),
                    layer: found.layer,
                    module: found.module.clone(),
                    part: part.map(str::to_owned),
                    rows: spectrum.rows,
                    cols: spectrum.cols,
                    tensor: tensor.clone(),
                    metrics: spectrum.metrics(WEIGHT_TOP_K),
                });
                tensors.push((tensor, spectrum.singular_values));
            }
        }
    }
    let metrics = WeightNodeMetrics {
        method,
        delta_from: job.base.as_ref().map(|(revision, _)| revision.clone()),
        matrices,
    };
    let bytes = serialize(&tensors, &metrics).map_err(failed)?;
    Ok((metrics, bytes))
}

/// The node's file: one F64 tensor of singular values per matrix, named as in
/// [`MatrixResult::tensor`], and one metadata key (deterministic bytes).
fn serialize(
    tensors: &[(String, Vec<f64>)],
    metrics: &WeightNodeMetrics,
) -> Result<Vec<u8>, String> {
    use safetensors::{Dtype, tensor::TensorView};
    let raw: Vec<(String, Vec<u8>, usize)> = tensors
        .iter()
        .map(|(name, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), bytes, values.len())
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, bytes, len)| {
            TensorView::new(Dtype::F64, vec![*len], bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = serde_json::json!({
        "version": 1,
        "method": metrics.method,
        "delta_from": metrics.delta_from,
    });
    let metadata =
        std::collections::HashMap::from([(WEIGHTS_FORMAT.to_owned(), header.to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// Reads back the singular values of a weight-spectrum file, by tensor name.
pub fn read_node_file(bytes: &[u8]) -> Result<BTreeMap<String, Vec<f64>>, String> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        if view.dtype() != safetensors::Dtype::F64 {
            return Err(format!("tensor `{name}` is not F64"));
        }
        let values = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        out.insert(name, values);
    }
    Ok(out)
}

/// Keys of the 2-D tensors of a checkpoint, read from its headers.
pub fn checkpoint_matrix_keys(files: &[PathBuf]) -> Result<Vec<String>, RunError> {
    let index = checkpoint_index(files)?;
    Ok(matrix_keys(&index).into_iter().map(str::to_owned).collect())
}

/// Bytes of a file, ready for the sink.
pub(super) fn artifact(bytes: Vec<u8>) -> crate::sink::Artifact {
    crate::sink::Artifact::from_bytes(Bytes::from(bytes))
}
