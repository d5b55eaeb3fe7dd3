//! A spectrum as a small safetensors buffer (in memory; the sink uploads it).
//!
//! Layout (all tensors F64, little-endian):
//!
//! | tensor | shape | holds |
//! | --- | --- | --- |
//! | `raw.singular_values` | `[d]` | σ of `X`, non-increasing |
//! | `centred.singular_values` | `[d]` | σ of `X − 1μᵀ`, non-increasing |
//! | `mean` | `[d]` | column means `μ` |
//! | `raw.eigenvectors` | `[d, k]` | top-`k` eigenvectors of `XᵀX` as columns (only if kept) |
//! | `centred.eigenvectors` | `[d, k]` | same for the centred Gram matrix (only if kept) |
//!
//! The header's `__metadata__` holds exactly one key, [`SPECTRUM_FORMAT`], whose value is a
//! JSON object `{"version": 1, "rows": N, "top_k": K}`. One key keeps the bytes deterministic:
//! the safetensors crate writes metadata from a `HashMap`, whose order varies between runs.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::spectrum::{Decomposition, Eigenbasis, Spectrum};
use super::{AnalysisError, check_shape};

/// The metadata key of a stored spectrum.
pub const SPECTRUM_FORMAT: &str = "hubsweep.spectrum";
/// The layout version written by [`Spectrum::to_safetensors`].
pub const SPECTRUM_FORMAT_VERSION: u32 = 1;

/// A tensor read back: shape and values.
type Tensor = (Vec<usize>, Vec<f64>);

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    rows: u64,
    top_k: usize,
}

fn error(what: impl Into<String>) -> AnalysisError {
    AnalysisError::Safetensors {
        what: what.into(),
        source: None,
    }
}

fn to_bytes(values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| f64::from_le_bytes(chunk.try_into().expect("chunks of 8")))
        .collect()
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
    /// The spectrum as safetensors bytes (layout in the module docs). The same spectrum always
    /// gives the same bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, AnalysisError> {
        let width = self.width();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
            (
                "raw.singular_values".into(),
                vec![width],
                to_bytes(&self.raw.singular_values),
            ),
            (
                "centred.singular_values".into(),
                vec![width],
                to_bytes(&self.centred.singular_values),
            ),
            ("mean".into(), vec![width], to_bytes(&self.mean)),
        ];
        for (name, part) in [("raw", &self.raw), ("centred", &self.centred)] {
            if let Some(basis) = &part.eigenvectors {
                tensors.push((
                    format!("{name}.eigenvectors"),
                    vec![width, basis.len()],
                    to_bytes(&basis_to_row_major(basis)),
                ));
            }
        }
        let views = tensors
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
        let header = Header {
            version: SPECTRUM_FORMAT_VERSION,
            rows: self.rows,
            top_k: self.top_k,
        };
        let metadata = HashMap::from([(
            SPECTRUM_FORMAT.to_string(),
            serde_json::to_string(&header).expect("plain struct serializes"),
        )]);
        safetensors::serialize(views, Some(metadata)).map_err(|source| AnalysisError::Safetensors {
            what: "serialize".into(),
            source: Some(source),
        })
    }

    /// Reads a spectrum written by [`Spectrum::to_safetensors`].
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, AnalysisError> {
        let (_, metadata) =
            SafeTensors::read_metadata(bytes).map_err(|source| AnalysisError::Safetensors {
                what: "read header".into(),
                source: Some(source),
            })?;
        let header_text = metadata
            .metadata()
            .as_ref()
            .and_then(|map| map.get(SPECTRUM_FORMAT))
            .ok_or_else(|| error(format!("no `{SPECTRUM_FORMAT}` metadata")))?;
        let header: Header = serde_json::from_str(header_text)
            .map_err(|err| error(format!("bad `{SPECTRUM_FORMAT}` metadata: {err}")))?;
        if header.version != SPECTRUM_FORMAT_VERSION {
            return Err(error(format!(
                "layout version `{}` is not `{SPECTRUM_FORMAT_VERSION}`",
                header.version
            )));
        }
        let file =
            SafeTensors::deserialize(bytes).map_err(|source| AnalysisError::Safetensors {
                what: "read tensors".into(),
                source: Some(source),
            })?;
        let read = |name: &str| -> Result<Option<Tensor>, AnalysisError> {
            match file.tensor(name) {
                Ok(view) if view.dtype() == Dtype::F64 => {
                    Ok(Some((view.shape().to_vec(), from_bytes(view.data()))))
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
        };
        let vector = |name: &str| -> Result<Vec<f64>, AnalysisError> {
            match read(name)? {
                Some((shape, values)) if shape.len() == 1 => Ok(values),
                Some((shape, _)) => Err(error(format!("tensor `{name}` has shape {shape:?}"))),
                None => Err(error(format!("tensor `{name}` is missing"))),
            }
        };
        let mean = vector("mean")?;
        let width = mean.len();
        let part = |name: &str| -> Result<Decomposition, AnalysisError> {
            let singular_values = vector(&format!("{name}.singular_values"))?;
            check_shape("singular values", singular_values.len(), 1, width)?;
            let eigenvectors = match read(&format!("{name}.eigenvectors"))? {
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
