//! A safetensors header reader for hostile input.
//!
//! `verify --deep` reads files that anyone could have committed, so this parser trusts nothing:
//! the header length is capped before anything is allocated, every size is computed with
//! checked arithmetic, tensor ranges must tile the data region exactly (no gaps, no overlaps,
//! nothing past the end), and every failure is an error value, never a panic. It needs only the
//! first `8 + header length` bytes and the total file length, so a caller can check a file while
//! it is still arriving.

use std::collections::BTreeMap;

/// Largest header accepted (real headers of our files are a few KiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Most tensors accepted in one file.
pub const MAX_TENSORS: usize = 65_536;
/// Most dimensions of one tensor.
pub const MAX_RANK: usize = 16;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dtype as written (`F32`, `I32`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Byte range in the data region (relative to its start).
    pub offsets: (u64, u64),
}

/// A checked header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// Tensors in file order (by data offset).
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__` string pairs.
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data region in the file (`8 + header length`).
    pub data_start: u64,
}

impl Header {
    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than 8 bytes.
    #[error("the file is {len} bytes, too short for a safetensors header")]
    TooShort {
        /// File length.
        len: u64,
    },
    /// The header length field is larger than allowed.
    #[error("the header claims {claimed} bytes; at most {MAX_HEADER_BYTES} are accepted")]
    HeaderTooLarge {
        /// Claimed length.
        claimed: u64,
    },
    /// The header runs past the end of the file (or of the bytes given).
    #[error("the header claims {claimed} bytes but only {available} follow")]
    Truncated {
        /// Claimed length.
        claimed: u64,
        /// Bytes there.
        available: u64,
    },
    /// Not a JSON object of the expected shape.
    #[error("the header is not valid: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// One tensor's entry is wrong.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// Tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The tensors do not tile the data region.
    #[error("data layout: {reason}")]
    Layout {
        /// What is wrong.
        reason: String,
    },
}

/// Size in bytes of one element of a safetensors dtype.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// How many leading bytes [`parse`] needs for a file starting with `prefix` (at least 8 bytes):
/// `8 + header length`, or an error when the length is over the cap.
pub fn needed(prefix: &[u8]) -> Result<u64, HeaderError> {
    let Some(len) = prefix.get(..8) else {
        return Err(HeaderError::TooShort {
            len: prefix.len() as u64,
        });
    };
    let mut raw = [0u8; 8];
    raw.copy_from_slice(len);
    let claimed = u64::from_le_bytes(raw);
    if claimed > MAX_HEADER_BYTES {
        return Err(HeaderError::HeaderTooLarge { claimed });
    }
    Ok(8 + claimed)
}

/// Parses and checks the header at the start of `bytes` for a file of `file_len` bytes in all
/// (`bytes` may be just the first [`needed`] bytes).
pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, HeaderError> {
    if file_len < 8 || bytes.len() < 8 {
        return Err(HeaderError::TooShort {
            len: file_len.min(bytes.len() as u64),
        });
    }
    let data_start = needed(bytes)?;
    let claimed = data_start - 8;
    let available = (bytes.len() as u64).min(file_len) - 8;
    if claimed > available {
        return Err(HeaderError::Truncated { claimed, available });
    }
    let text = &bytes[8..data_start as usize];
    let invalid = |reason: String| HeaderError::Invalid { reason };
    let root: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
    if root.len() > MAX_TENSORS + 1 {
        return Err(invalid(format!(
            "{} entries; at most {MAX_TENSORS} tensors are accepted",
            root.len()
        )));
    }
    let mut header = Header {
        data_start,
        ..Header::default()
    };
    for (name, value) in root {
        if name == "__metadata__" {
            let map = value
                .as_object()
                .ok_or_else(|| invalid("`__metadata__` is not an object".into()))?;
            for (key, value) in map {
                let value = value
                    .as_str()
                    .ok_or_else(|| invalid(format!("metadata `{key}` is not a string")))?;
                header.metadata.insert(key.clone(), value.to_owned());
            }
            continue;
        }
        header.tensors.push(tensor(name, &value)?);
    }
    header.tensors.sort_by_key(|t| t.offsets);
    let data_len = file_len - data_start;
    let mut cursor = 0u64;
    for t in &header.tensors {
        if t.offsets.0 != cursor {
            return Err(HeaderError::Layout {
                reason: format!(
                    "tensor `{}` starts at {} where {cursor} was expected (gap or overlap)",
                    t.name, t.offsets.0
                ),
            });
        }
        cursor = t.offsets.1;
    }
    if cursor != data_len {
        return Err(HeaderError::Layout {
            reason: format!("tensors cover {cursor} bytes of a {data_len}-byte data region"),
        });
    }
    Ok(header)
}

fn tensor(name: String, value: &serde_json::Value) -> Result<TensorInfo, HeaderError> {
    let bad = |reason: &str| HeaderError::Tensor {
        name: name.clone(),
        reason: reason.to_owned(),
    };
    let entry = value.as_object().ok_or_else(|| bad("not an object"))?;
    if let Some(key) = entry
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(bad(&format!("unknown field `{key}`")));
    }
    let dtype = entry
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("no dtype"))?;
    let size = dtype_size(dtype).ok_or_else(|| bad(&format!("unknown dtype `{dtype}`")))?;
    let dims = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("no shape"))?;
    if dims.len() > MAX_RANK {
        return Err(bad(&format!(
            "{} dimensions; at most {MAX_RANK}",
            dims.len()
        )));
    }
    let shape = dims
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| bad("a dimension is not a count")))
        .collect::<Result<Vec<u64>, _>>()?;
    let offsets = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("`data_offsets` is not a pair"))?;
    let (Some(begin), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
        return Err(bad("`data_offsets` are not offsets"));
    };
    let bytes = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("its size overflows"))?;
    if end < begin || end - begin != bytes {
        return Err(bad(&format!(
            "offsets {begin}..{end} do not hold {bytes} bytes of {dtype} {shape:?}"
        )));
    }
    Ok(TensorInfo {
        name,
        dtype: dtype.to_owned(),
        shape,
        offsets: (begin, end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data, 0);
        out
    }

    #[test]
    fn reads_a_valid_header() {
        let bytes = file(
            r#"{"__metadata__":{"a":"b"},"y":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]},"x":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#,
            24,
        );
        let header = parse(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(header.tensors[0].name, "x");
        assert_eq!(header.tensor("y").unwrap().shape, vec![2, 2]);
        assert_eq!(header.metadata["a"], "b");
    }

    #[test]
    fn refuses_hostile_headers() {
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&huge, huge.len() as u64),
            Err(HeaderError::HeaderTooLarge { .. })
        ));
        let short = 100u64.to_le_bytes();
        assert!(matches!(
            parse(&short, 8),
            Err(HeaderError::Truncated { .. })
        ));
        let overflow = file(
            r#"{"x":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(matches!(
            parse(&overflow, overflow.len() as u64),
            Err(HeaderError::Tensor { .. })
        ));
        let past_end = file(
            r#"{"x":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}"#,
            8,
        );
        assert!(matches!(
            parse(&past_end, past_end.len() as u64),
            Err(HeaderError::Layout { .. })
        ));
        let overlap = file(
            r#"{"x":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"y":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(parse(&overlap, overlap.len() as u64).is_err());
        let unknown = file(
            r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}}"#,
            1,
        );
        assert!(parse(&unknown, unknown.len() as u64).is_err());
        assert!(parse(b"", 0).is_err());
    }
}
