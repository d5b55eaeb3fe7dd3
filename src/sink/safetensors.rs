//! An in-memory safetensors writer whose header is written first, from known shapes.
//!
//! The Hub's LFS protocol needs an object's sha256 and size before its first byte is sent
//! (docs/hub.md, "Artifacts before upload"). Shapes are known before capture, so the header — and with it the
//! exact file size — is fixed up front: the buffer is allocated once, tensor bytes are appended
//! as the forward pass produces them, and the sha256 is updated as bytes arrive. When the last
//! byte is in, the artifact is complete and hashed; nothing touches the disk.
//!
//! Layout (the safetensors format): an 8-byte little-endian header length `N`, `N` bytes of
//! JSON header (`__metadata__` of string pairs, then one entry per tensor with `dtype`, `shape`
//! and `data_offsets` relative to the data section), padded with spaces to a multiple of 8, then
//! the tensor data in header order. Our header is deterministic: metadata keys sorted, tensors in
//! the order given, no timestamps — same node, same bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Element type of a tensor, as safetensors names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TensorDtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit signed integer (token ids).
    I32,
    /// 64-bit float (spectra).
    F64,
    /// 64-bit signed integer.
    I64,
}

impl TensorDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TensorDtype::F16 | TensorDtype::BF16 => 2,
            TensorDtype::F32 | TensorDtype::I32 => 4,
            TensorDtype::F64 | TensorDtype::I64 => 8,
        }
    }
}

/// One tensor an artifact will hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: TensorDtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Bytes of data.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Why an artifact could not be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    /// Two tensors with one name.
    #[error("tensor `{0}` is listed twice")]
    DuplicateTensor(String),
    /// More bytes than the header announced.
    #[error("tensor `{name}` takes {expected} bytes; {given} more were appended")]
    Overflow {
        /// Tensor being written.
        name: String,
        /// Its size.
        expected: usize,
        /// Bytes offered beyond what fits.
        given: usize,
    },
    /// Appended to a tensor that is not the next one.
    #[error("tensor `{given}` appended while `{expected}` is still being written")]
    OutOfOrder {
        /// Tensor expected next.
        expected: String,
        /// Tensor given.
        given: String,
    },
    /// Finished before all bytes arrived.
    #[error("artifact finished with {missing} bytes of tensor `{name}` missing")]
    Incomplete {
        /// First incomplete tensor.
        name: String,
        /// Bytes missing in total.
        missing: usize,
    },
}

#[derive(Serialize)]
struct HeaderEntry<'a> {
    dtype: TensorDtype,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

/// A finished artifact: the bytes, their sha256 (the Hub's LFS oid) and size.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The whole file.
    pub bytes: Bytes,
    /// sha256 of `bytes`.
    pub sha256: [u8; 32],
}

impl Artifact {
    /// An artifact from bytes serialized elsewhere (e.g. a spectrum); hashes them.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let sha256 = Sha256::digest(&bytes).into();
        Self { bytes, sha256 }
    }

    /// sha256 as lowercase hex.
    pub fn oid(&self) -> String {
        hex::encode(self.sha256)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Writes one safetensors file into memory, tensor by tensor, hashing as it goes.
pub struct ArtifactWriter {
    tensors: Vec<TensorSpec>,
    buffer: Vec<u8>,
    hasher: Sha256,
    total: usize,
    current: usize,
    written_in_current: usize,
}

/// Size in bytes of the file holding `tensors` with `metadata`.
pub fn file_size(
    tensors: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
) -> Result<usize, WriteError> {
    Ok(header(tensors, metadata)?.len() + tensors.iter().map(TensorSpec::byte_len).sum::<usize>())
}

fn header(
    tensors: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WriteError> {
    let mut seen = std::collections::HashSet::new();
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).unwrap_or_default());
    }
    let mut offset = 0;
    for (i, tensor) in tensors.iter().enumerate() {
        if !seen.insert(tensor.name.as_str()) || tensor.name == "__metadata__" {
            return Err(WriteError::DuplicateTensor(tensor.name.clone()));
        }
        if i > 0 || !metadata.is_empty() {
            json.push(',');
        }
        let end = offset + tensor.byte_len();
        let entry = HeaderEntry {
            dtype: tensor.dtype,
            shape: &tensor.shape,
            data_offsets: [offset, end],
        };
        json.push_str(&serde_json::to_string(&tensor.name).unwrap_or_default());
        json.push(':');
        json.push_str(&serde_json::to_string(&entry).unwrap_or_default());
        offset = end;
    }
    json.push('}');
    // The data section starts 8-aligned (safetensors pads the header with spaces).
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    Ok(bytes)
}

impl ArtifactWriter {
    /// Starts an artifact: the header is written and hashed now; the buffer is allocated to the
    /// exact file size.
    pub fn new(
        tensors: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self, WriteError> {
        let head = header(&tensors, metadata)?;
        let data: usize = tensors.iter().map(TensorSpec::byte_len).sum();
        let mut buffer = Vec::with_capacity(head.len() + data);
        buffer.extend_from_slice(&head);
        let mut hasher = Sha256::new();
        hasher.update(&head);
        let total = head.len() + data;
        let mut writer = Self {
            tensors,
            buffer,
            hasher,
            total,
            current: 0,
            written_in_current: 0,
        };
        writer.skip_empty();
        Ok(writer)
    }

    fn skip_empty(&mut self) {
        while self.current < self.tensors.len()
            && self.written_in_current == self.tensors[self.current].byte_len()
        {
            self.current += 1;
            self.written_in_current = 0;
        }
    }

    /// The file's size, known from the start.
    pub fn size(&self) -> usize {
        self.total
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> usize {
        self.total - self.buffer.len()
    }

    /// Appends bytes of tensor `name`, which must be the tensor being written (tensors are
    /// written in header order; a tensor may arrive in several pieces, e.g. one per batch).
    pub fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        let Some(tensor) = self.tensors.get(self.current) else {
            return Err(WriteError::Overflow {
                name: name.to_owned(),
                expected: 0,
                given: bytes.len(),
            });
        };
        if tensor.name != name {
            return Err(WriteError::OutOfOrder {
                expected: tensor.name.clone(),
                given: name.to_owned(),
            });
        }
        let room = tensor.byte_len() - self.written_in_current;
        if bytes.len() > room {
            return Err(WriteError::Overflow {
                name: name.to_owned(),
                expected: tensor.byte_len(),
                given: bytes.len() - room,
            });
        }
        self.hasher.update(bytes);
        self.buffer.extend_from_slice(bytes);
        self.written_in_current += bytes.len();
        self.skip_empty();
        Ok(())
    }

    /// Completes the artifact; every announced byte must have arrived.
    pub fn finish(self) -> Result<Artifact, WriteError> {
        if let Some(tensor) = self.tensors.get(self.current) {
            return Err(WriteError::Incomplete {
                name: tensor.name.clone(),
                missing: self.total - self.buffer.len(),
            });
        }
        Ok(Artifact {
            bytes: Bytes::from(self.buffer),
            sha256: self.hasher.finalize().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec {
                name: "activations".into(),
                dtype: TensorDtype::F32,
                shape: vec![3, 2],
            },
            TensorSpec {
                name: "token_ids".into(),
                dtype: TensorDtype::I32,
                shape: vec![3],
            },
        ]
    }

    #[test]
    fn file_reads_back_with_the_safetensors_crate() {
        let metadata: BTreeMap<String, String> = [("node".to_owned(), "abc".to_owned())].into();
        let mut writer = ArtifactWriter::new(specs(), &metadata).unwrap();
        let size = writer.size();
        let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        writer.append("activations", &values[..8]).unwrap();
        writer.append("activations", &values[8..]).unwrap();
        writer
            .append(
                "token_ids",
                &[7i32, 8, 9]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let artifact = writer.finish().unwrap();
        assert_eq!(artifact.bytes.len(), size);
        assert_eq!(
            artifact.sha256,
            <[u8; 32]>::from(Sha256::digest(&artifact.bytes))
        );
        let (_, meta) = safetensors::SafeTensors::read_metadata(&artifact.bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["node"], "abc");
        let file = safetensors::SafeTensors::deserialize(&artifact.bytes).unwrap();
        let acts = file.tensor("activations").unwrap();
        assert_eq!(acts.shape(), &[3, 2]);
        assert_eq!(acts.data(), &values[..]);
        assert_eq!(
            file.tensor("token_ids").unwrap().dtype(),
            safetensors::Dtype::I32
        );
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let make = || {
            let mut w = ArtifactWriter::new(specs(), &BTreeMap::new()).unwrap();
            w.append("activations", &[0u8; 24]).unwrap();
            w.append("token_ids", &[1u8; 12]).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(make().bytes, make().bytes);
    }

    #[test]
    fn refuses_misuse() {
        let mut w = ArtifactWriter::new(specs(), &BTreeMap::new()).unwrap();
        assert!(matches!(
            w.append("token_ids", &[0; 4]),
            Err(WriteError::OutOfOrder { .. })
        ));
        assert!(matches!(
            w.append("activations", &[0; 25]),
            Err(WriteError::Overflow { .. })
        ));
        w.append("activations", &[0; 24]).unwrap();
        assert!(matches!(
            w.finish(),
            Err(WriteError::Incomplete { missing: 12, .. })
        ));
        let twice = vec![specs()[0].clone(), specs()[0].clone()];
        assert!(matches!(
            ArtifactWriter::new(twice, &BTreeMap::new()),
            Err(WriteError::DuplicateTensor(_))
        ));
    }
}
