//! Checkpoint tensors from an HF layout: one `model.safetensors` or a sharded
//! `model.safetensors.index.json`, in F16, BF16 or F32, converted once to the compute dtype.
//!
//! Only the keys the forward pass asks for are converted, so keys transformers ignores on load
//! (`attention.bias`, `attention.masked_bias`, `attention.rotary_emb.inv_freq` in older NeoX
//! checkpoints) never matter. Every error names the file and the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::ModelError;

/// The safetensors files of a checkpoint, read into memory, with a key → file routing.
pub struct Weights {
    /// Raw bytes per file (kept so tensors are converted lazily, one at a time).
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Which file holds each key.
    routing: HashMap<String, usize>,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("tensors", &self.routing.len())
            .finish()
    }
}

impl Weights {
    /// Reads and validates the headers of `paths`; tensors are converted to `dtype` on `device`
    /// as they are fetched with [`Weights::get`].
    pub fn read(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let bytes = fs_err::read(path).map_err(|source| ModelError::Read {
                path: path.clone(),
                source,
            })?;
            let parsed =
                SafeTensors::deserialize(&bytes).map_err(|source| ModelError::Safetensors {
                    path: path.clone(),
                    source,
                })?;
            for name in parsed.names() {
                routing.insert(name.to_string(), index);
            }
            files.push((path.clone(), bytes));
        }
        Ok(Self {
            files,
            routing,
            device: device.clone(),
            dtype,
        })
    }

    /// Whether the checkpoint has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.routing.contains_key(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.routing.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// The storage dtype of the first tensor (the checkpoint's dtype in practice).
    pub fn stored_dtype(&self) -> Option<safetensors::Dtype> {
        let key = self.keys().first().map(|k| k.to_string())?;
        let (_, bytes) = &self.files[self.routing[&key]];
        SafeTensors::deserialize(bytes)
            .ok()?
            .tensor(&key)
            .ok()
            .map(|v| v.dtype())
    }

    fn location(&self) -> PathBuf {
        match self.files.as_slice() {
            [(path, _)] => path.clone(),
            _ => self
                .files
                .first()
                .and_then(|(p, _)| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// Fetches `key`, checks it has `shape`, converts it to the compute dtype.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let Some(&index) = self.routing.get(key) else {
            return Err(ModelError::MissingWeight {
                path: self.location(),
                key: key.to_string(),
            });
        };
        let (path, bytes) = &self.files[index];
        // The header was validated in `read`, so this only re-walks it.
        let parsed = SafeTensors::deserialize(bytes).map_err(|source| ModelError::Safetensors {
            path: path.clone(),
            source,
        })?;
        let view = parsed
            .tensor(key)
            .map_err(|source| ModelError::Safetensors {
                path: path.clone(),
                source,
            })?;
        if view.shape() != shape {
            return Err(ModelError::WeightShape {
                path: path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        use safetensors::Dtype as S;
        if !matches!(view.dtype(), S::F16 | S::BF16 | S::F32 | S::F64) {
            return Err(ModelError::WeightDtype {
                path: path.clone(),
                key: key.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let tensor = view
            .load(&self.device)
            .map_err(|source| ModelError::Tensor {
                context: format!("loading `{key}` from `{}`", path.display()),
                source,
            })?;
        tensor
            .to_dtype(self.dtype)
            .map_err(|source| ModelError::Tensor {
                context: format!("converting `{key}` to {:?}", self.dtype),
                source,
            })
    }

    /// Like [`Weights::get`] but `None` when the key is absent.
    pub fn get_optional(&self, key: &str, shape: &[usize]) -> Result<Option<Tensor>, ModelError> {
        if self.contains(key) {
            self.get(key, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Reads the shard list of `model.safetensors.index.json` (its `weight_map` values, deduplicated
/// in first-seen order), relative to the index's folder.
pub fn shards_from_index(index_path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = fs_err::read_to_string(index_path).map_err(|source| ModelError::Read {
        path: index_path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::ConfigJson {
            path: index_path.to_path_buf(),
            source,
        })?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(ModelError::InvalidConfig {
            path: index_path.to_path_buf(),
            key: "weight_map".into(),
            reason: "is missing or not an object".into(),
        });
    };
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for (key, file) in map {
        let Some(file) = file.as_str() else {
            return Err(ModelError::InvalidConfig {
                path: index_path.to_path_buf(),
                key: format!("weight_map.{key}"),
                reason: "is not a file name".into(),
            });
        };
        let path = dir.join(file);
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    Ok(shards)
}
