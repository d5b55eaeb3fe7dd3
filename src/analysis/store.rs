//! Spectra and Gram accumulators as small safetensors buffers (in memory; the sink uploads
//! them). All tensors are F64, little-endian.
//!
//! A spectrum ([`Spectrum::to_safetensors`]):
//!
//! | tensor | shape | holds |
//! | --- | --- | --- |
//! | `raw.singular_values` | `[d]` | σ of `X`, non-increasing |
//! | `centred.singular_values` | `[d]` | σ of `X − 1μᵀ`, non-increasing |
//! | `mean` | `[d]` | column means `μ` |
//! | `raw.eigenvectors` | `[d, k]` | top-`k` eigenvectors of `XᵀX` as columns (only if kept) |
//! | `centred.eigenvectors` | `[d, k]` | same for the centred Gram matrix (only if kept) |
//!
//! with `__metadata__` `{"hubsweep.spectrum": "{\"version\":1,\"rows\":N,\"top_k\":K}"}`.
//!
//! A Gram accumulator ([`GramAccumulator::to_safetensors`], a shard's partial state):
//!
//! | tensor | shape | holds |
//! | --- | --- | --- |
//! | `gram` | `[d, d]` | `XᵀX`, full symmetric |
//! | `column_sums` | `[d]` | `Xᵀ1` |
//!
//! with `__metadata__` `{"hubsweep.gram": "{\"version\":1,\"rows\":N}"}`.
//!
//! Weight spectra are stored one file per `weight_spectrum` node, by the run
//! (`exec::weights`, metadata key `hubsweep.weights`; layout in docs/analysis.md).
//!
//! The metadata holds exactly one key: the safetensors crate writes metadata from a
//! `HashMap`, whose order varies between runs, and one key keeps the bytes deterministic.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::gram::GramAccumulator;
use super::spectrum::{Decomposition, Eigenbasis, Spectrum};
use super::{AnalysisError, check_shape};

/// The metadata key of a stored spectrum.
pub const SPECTRUM_FORMAT: &str = "hubsweep.spectrum";
/// The metadata key of a stored Gram accumulator.
pub const GRAM_FORMAT: &str = "hubsweep.gram";
/// The layout version written by [`Spectrum::to_safetensors`] and
/// [`GramAccumulator::to_safetensors`].
pub const SPECTRUM_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SpectrumHeader {
    version: u32,
    rows: u64,
    top_k: usize,
}

#[derive(Serialize, Deserialize)]
struct GramHeader {
    version: u32,
    rows: u64,
}

/// A tensor read back: shape and values.
type Tensor = (Vec<usize>, Vec<f64>);

fn error(what: impl Into<String>) -> AnalysisError {
    AnalysisError::Safetensors {
        what: what.into(),
        source: None,
    }
}

/// Serializes F64 tensors `(name, shape, values)` with one metadata entry.
fn write(
    tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
    key: &str,
    header: &impl Serialize,
) -> Result<Vec<u8>, AnalysisError> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = values
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F64, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|source| AnalysisError::Safetensors {
                    what: format!("tensor `{name}`"),
                    source: Some(source),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([(
        key.to_string(),
        serde_json::to_string(header).expect("plain struct serializes"),
    )]);
    safetensors::serialize(views, Some(metadata)).map_err(|source| AnalysisError::Safetensors {
        what: "serialize".into(),
        source: Some(source),
    })
}

/// A parsed buffer: its header under `key` and its F64 tensors by name.
struct Reader<'data> {
    file: SafeTensors<'data>,
}

impl<'data> Reader<'data> {
    fn open<H: DeserializeOwned>(
        bytes: &'data [u8],
        key: &str,
    ) -> Result<(Self, H), AnalysisError> {
        let (_, metadata) =
            SafeTensors::read_metadata(bytes).map_err(|source| AnalysisError::Safetensors {
                what: "read header".into(),
                source: Some(source),
            })?;
        let header_text = metadata
            .metadata()
            .as_ref()
            .and_then(|map| map.get(key))
            .ok_or_else(|| error(format!("no `{key}` metadata")))?;
        let header: H = serde_json::from_str(header_text)
            .map_err(|err| error(format!("bad `{key}` metadata: {err}")))?;
        let file =
            SafeTensors::deserialize(bytes).map_err(|source| AnalysisError::Safetensors {
                what: "read tensors".into(),
                source: Some(source),
            })?;
        Ok((Self { file }, header))
    }

    fn optional(&self, name: &str) -> Result<Option<Tensor>, AnalysisError> {
        match self.file.tensor(name) {
            Ok(view) if view.dtype() == Dtype::F64 => {
                let values = view
                    .data()
                    .chunks_exact(8)
                    .map(|chunk| f64::from_le_bytes(chunk.try_into().expect("chunks of 8")))
                    .collect();
                Ok(Some((view.shape().to_vec(), values)))
            }
            Ok(view) => Err(error(format!(
                "tensor `{name}` is `{:?}`, not `F64`",
                view.dtype()
            ))),
            Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
            Err(source) => Err(AnalysisError::Safetensors {
                what: format!("tensor `{name}`"),
                source: Some(source),
            }),
        }
    }

    /// A tensor that must be present, with exactly `shape` (`None` in a position: any).
    fn required(&self, name: &str, shape: &[Option<usize>]) -> Result<Tensor, AnalysisError> {
        let (found, values) = self
            .optional(name)?
            .ok_or_else(|| error(format!("tensor `{name}` is missing")))?;
        let fits = found.len() == shape.len()
            && found
                .iter()
                .zip(shape)
                .all(|(size, expected)| expected.is_none_or(|expected| expected == *size));
        if !fits {
            return Err(error(format!("tensor `{name}` has shape {found:?}")));
        }
        Ok((found, values))
    }
}

fn check_version(version: u32) -> Result<(), AnalysisError> {
    if version != SPECTRUM_FORMAT_VERSION {
        return Err(error(format!(
            "layout version `{version}` is not `{SPECTRUM_FORMAT_VERSION}`"
        )));
    }
    Ok(())
}

/// Column-major `width × k` → row-major `[width, k]`.
fn basis_to_row_major(basis: &Eigenbasis) -> Vec<f64> {
    let (width, k) = (basis.width(), basis.len());
    let mut out = Vec::with_capacity(width * k);
    for row in 0..width {
        out.extend((0..k).map(|column| basis.values()[column * width + row]));
    }
    out
}

impl Spectrum {
    /// The spectrum as safetensors bytes (layout in `docs/analysis.md`). The same spectrum
    /// always gives the same bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, AnalysisError> {
        let width = self.width();
        let mut tensors = vec![
            (
                "raw.singular_values".to_string(),
                vec![width],
                self.raw.singular_values.clone(),
            ),
            (
                "centred.singular_values".to_string(),
                vec![width],
                self.centred.singular_values.clone(),
            ),
            ("mean".to_string(), vec![width], self.mean.clone()),
        ];
        for (name, part) in [("raw", &self.raw), ("centred", &self.centred)] {
            if let Some(basis) = &part.eigenvectors {
                tensors.push((
                    format!("{name}.eigenvectors"),
                    vec![width, basis.len()],
                    basis_to_row_major(basis),
                ));
            }
        }
        let header = SpectrumHeader {
            version: SPECTRUM_FORMAT_VERSION,
            rows: self.rows,
            top_k: self.top_k,
        };
        write(tensors, SPECTRUM_FORMAT, &header)
    }

    /// Reads a spectrum written by [`Spectrum::to_safetensors`].
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, AnalysisError> {
        let (reader, header): (_, SpectrumHeader) = Reader::open(bytes, SPECTRUM_FORMAT)?;
        check_version(header.version)?;
        let (_, mean) = reader.required("mean", &[None])?;
        let width = mean.len();
        let part = |name: &str| -> Result<Decomposition, AnalysisError> {
            let (_, singular_values) =
                reader.required(&format!("{name}.singular_values"), &[Some(width)])?;
            let eigenvectors = match reader.optional(&format!("{name}.eigenvectors"))? {
                Some((shape, values)) if shape.len() == 2 && shape[0] == width => {
                    let k = shape[1];
                    let mut columns = Vec::with_capacity(values.len());
                    for column in 0..k {
                        columns.extend((0..width).map(|row| values[row * k + column]));
                    }
                    Some(Eigenbasis::from_columns(width, columns)?)
                }
                Some((shape, _)) => {
                    return Err(error(format!(
                        "tensor `{name}.eigenvectors` has shape {shape:?}, expected [{width}, k]"
                    )));
                }
                None => None,
            };
            Ok(Decomposition {
                singular_values,
                eigenvectors,
            })
        };
        Ok(Spectrum {
            rows: header.rows,
            top_k: header.top_k,
            raw: part("raw")?,
            centred: part("centred")?,
            mean,
        })
    }
}

impl GramAccumulator {
    /// The accumulated state as safetensors bytes (layout in `docs/analysis.md`): a shard's
    /// partial Gram matrix, to be merged later or elsewhere. Deterministic.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, AnalysisError> {
        let width = self.width();
        let gram = self.gram();
        let flat = (0..width)
            .flat_map(|row| (0..width).map(move |column| (row, column)))
            .map(|(row, column)| gram[(row, column)])
            .collect();
        let tensors = vec![
            ("gram".to_string(), vec![width, width], flat),
            (
                "column_sums".to_string(),
                vec![width],
                self.column_sums().to_vec(),
            ),
        ];
        let header = GramHeader {
            version: SPECTRUM_FORMAT_VERSION,
            rows: self.rows(),
        };
        write(tensors, GRAM_FORMAT, &header)
    }

    /// Reads an accumulator written by [`GramAccumulator::to_safetensors`] (with the default
    /// parallelism).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, AnalysisError> {
        let (reader, header): (_, GramHeader) = Reader::open(bytes, GRAM_FORMAT)?;
        check_version(header.version)?;
        let (_, column_sums) = reader.required("column_sums", &[None])?;
        let width = column_sums.len();
        let (_, gram) = reader.required("gram", &[Some(width), Some(width)])?;
        check_shape("gram", gram.len(), width, width)?;
        let mut accumulator = GramAccumulator::new(width);
        accumulator.push_gram(&gram, &column_sums, header.rows)?;
        Ok(accumulator)
    }
}
