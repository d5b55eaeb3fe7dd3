//! Checkpoint tensors from an HF layout: one `model.safetensors` or a sharded
//! `model.safetensors.index.json`, in F16, BF16 or F32, converted once to the compute dtype.
//!
//! Only the keys the forward pass asks for are read, so keys transformers ignores on load
//! (`attention.bias`, `attention.masked_bias`, `attention.rotary_emb.inv_freq` in older NeoX
//! checkpoints) never matter. Every error names the file and the key.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::ModelError;

/// Where one tensor's bytes live.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    /// The dtype name in the header (`F16`, `I64`, …).
    stored: String,
    /// The candle dtype, for the float dtypes hubsweep accepts.
    dtype: Option<DType>,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// The safetensors files of a checkpoint. Only headers are read up front (and checked against
/// the file sizes, which catches truncation); each tensor's bytes are read when fetched, so
/// peak memory is the converted model, not the model plus its files.
#[derive(Debug)]
pub struct Weights {
    files: Vec<PathBuf>,
    entries: HashMap<String, Entry>,
    device: Device,
    dtype: DType,
    /// Keys fetched so far, for [`Weights::unused_block_keys`].
    used: Mutex<HashSet<String>>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Safetensors headers are capped at 100 MB by the format's reference implementation.
const MAX_HEADER: u64 = 100_000_000;

fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

fn read_header(
    path: &Path,
    index: usize,
    entries: &mut HashMap<String, Entry>,
) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let read_err = |source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs_err::File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| invalid("shorter than its 8-byte header length".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(invalid(format!(
            "header length `{header_len}` exceeds the file size `{file_len}` (truncated?)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(read_err)?;
    let parsed: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| invalid(format!("header is not JSON ({e})")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    for (key, value) in parsed {
        if key == "__metadata__" {
            continue;
        }
        let raw: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| invalid(format!("tensor `{key}` has a bad header entry ({e})")))?;
        let (begin, end) = raw.data_offsets;
        if end > data_len {
            return Err(invalid(format!(
                "tensor `{key}` ends at byte `{end}` but the file holds `{data_len}` data bytes (truncated?)"
            )));
        }
        // Integer and exotic dtypes are recorded and refused on use, naming the key.
        let dtype = storage_dtype(&raw.dtype);
        let elements: usize = raw.shape.iter().product();
        let expected = dtype.map(|d| (elements * d.size_in_bytes()) as u64);
        if end < begin || expected.is_some_and(|n| n != end - begin) {
            return Err(invalid(format!(
                "tensor `{key}` has offsets that do not match its shape and dtype"
            )));
        }
        let entry = Entry {
            file: index,
            stored: raw.dtype,
            dtype,
            shape: raw.shape,
            start: data_start + begin,
            end: data_start + end,
        };
        entries.insert(key, entry);
    }
    Ok(())
}

impl Weights {
    /// Reads and validates the headers of `paths`; tensors are read and converted to `dtype`
    /// on `device` as they are fetched with [`Weights::get`].
    pub fn read(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            read_header(path, index, &mut entries)?;
        }
        Ok(Self {
            files: paths.to_vec(),
            entries,
            device: device.clone(),
            dtype,
            used: Mutex::default(),
        })
    }

    /// Whether the checkpoint has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The shape of `key` as stored, when the checkpoint has it.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|entry| entry.shape.as_slice())
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// The storage dtype name (`F16`, `BF16`, …) of the first tensor by name (the
    /// checkpoint's dtype in practice).
    pub fn stored_dtype(&self) -> Option<&str> {
        self.keys()
            .first()
            .map(|k| self.entries[*k].stored.as_str())
    }

    /// Keys inside the blocks (`….layers.N.…`, `….h.N.…`) that no [`Weights::get`] fetched,
    /// sorted, leaving out the buffers transformers ignores on load (`attn.bias`,
    /// `attn.masked_bias`, `attention.bias`, `attention.masked_bias`, `rotary_emb.inv_freq`).
    /// A family read from the wrong `model_type` shows here (see [`ModelError::UnusedWeights`]).
    pub fn unused_block_keys(&self) -> Vec<&str> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = |key: &str| {
            [
                "attn.bias",
                "attn.masked_bias",
                "attention.bias",
                "attention.masked_bias",
                "inv_freq",
            ]
            .iter()
            .any(|b| key.ends_with(b))
        };
        let in_block = |key: &str| {
            let parts: Vec<&str> = key.split('.').collect();
            parts
                .windows(2)
                .any(|w| matches!(w[0], "layers" | "h") && w[1].parse::<usize>().is_ok())
        };
        self.keys()
            .into_iter()
            .filter(|k| in_block(k) && !buffer(k) && !used.contains(*k))
            .collect()
    }

    /// The checkpoint's location for errors: its one file, or the folder of its shards.
    pub fn location(&self) -> PathBuf {
        match self.files.as_slice() {
            [path] => path.clone(),
            _ => self
                .files
                .first()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// Fetches `key`, checks it has `shape`, converts it to the compute dtype.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let Some(entry) = self.entries.get(key) else {
            return Err(ModelError::MissingWeight {
                path: self.location(),
                key: key.to_string(),
            });
        };
        let path = &self.files[entry.file];
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
        let Some(dtype) = entry.dtype else {
            return Err(ModelError::WeightDtype {
                path: path.clone(),
                key: key.to_string(),
                dtype: entry.stored.clone(),
            });
        };
        if entry.shape != shape {
            return Err(ModelError::WeightShape {
                path: path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let read_err = |source| ModelError::Read {
            path: path.clone(),
            source,
        };
        let mut file = fs_err::File::open(path).map_err(read_err)?;
        file.seek(SeekFrom::Start(entry.start)).map_err(read_err)?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        file.read_exact(&mut bytes).map_err(read_err)?;
        let tensor = Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, &self.device).map_err(
            |source| ModelError::Tensor {
                context: format!("loading `{key}` from `{}`", path.display()),
                source,
            },
        )?;
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
