//! Xorbs (the Xet protocol specification, "Xorb format"): chunks, each an 8-byte header
//! (version 0, compressed size u24, scheme, uncompressed size u24) and its bytes, optionally
//! followed by the footer `xet-core` writes (ident `XETBLOB`, the xorb hash, the chunk hashes,
//! boundaries). The server decompresses and hashes every chunk ([`validate`]): a xorb is stored
//! only if its chunks, its hash and (when present) its footer agree. The client serializes its
//! own ([`serialize`]) without copying the file's bytes.

use std::io::Read as _;
use std::ops::Range;

use bytes::Bytes;

use super::hash::{self, XetHash};

/// Largest uncompressed chunk (content-defined chunking cuts at 128 KiB at most).
pub const MAX_CHUNK_BYTES: usize = 128 * 1024;
/// Length of a chunk header.
const HEADER_BYTES: usize = 8;
/// Ident opening the footer.
const FOOTER_IDENT: &[u8; 7] = b"XETBLOB";
/// Ident opening the footer's chunk hash section.
const HASHES_IDENT: &[u8; 7] = b"XBLBHSH";
/// Ident opening the footer's boundary section.
const BOUNDARIES_IDENT: &[u8; 7] = b"XBLBBND";
/// Most chunk bytes one xorb may hold (`xet-core`'s limit; the CAS refuses more).
pub const MAX_XORB_BYTES: usize = 64 * 1024 * 1024;
/// Most chunks one xorb may hold.
pub const MAX_XORB_CHUNKS: usize = 8 * 1024;

/// One chunk of a stored xorb: its hash, where its header starts and its data ends in the
/// serialized xorb, and its uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Hash of the uncompressed bytes.
    pub hash: XetHash,
    /// Offset of the chunk's header in the xorb.
    pub start: u32,
    /// Offset just past the chunk's data.
    pub end: u32,
    /// Uncompressed length.
    pub unpacked: u32,
}

/// Length of one [`ChunkEntry`] in a stored chunk index.
pub const ENTRY_BYTES: usize = 44;

impl ChunkEntry {
    /// The entry's bytes in a stored chunk index.
    pub fn to_bytes(self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[..32].copy_from_slice(&self.hash.0);
        out[32..36].copy_from_slice(&self.start.to_le_bytes());
        out[36..40].copy_from_slice(&self.end.to_le_bytes());
        out[40..44].copy_from_slice(&self.unpacked.to_le_bytes());
        out
    }

    /// Parses a stored chunk index (written by the server itself).
    pub fn parse_index(bytes: &[u8]) -> Option<Vec<Self>> {
        if !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(ENTRY_BYTES)
                .map(|b| Self {
                    hash: XetHash(b[..32].try_into().expect("32 bytes")),
                    start: u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")),
                    end: u32::from_le_bytes(b[36..40].try_into().expect("4 bytes")),
                    unpacked: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
                })
                .collect(),
        )
    }
}

/// Why a xorb is refused (each a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XorbError {
    /// The body ends inside a chunk header or its data.
    #[error("xorb is truncated at byte {offset}")]
    Truncated {
        /// Where the missing bytes start.
        offset: usize,
    },
    /// A chunk header has an unknown version.
    #[error("chunk {index} has header version {version}, expected 0")]
    Version {
        /// Chunk index.
        index: usize,
        /// The version found.
        version: u8,
    },
    /// A chunk header names a compression scheme the protocol does not have.
    #[error("chunk {index} has unknown compression scheme {scheme}")]
    Scheme {
        /// Chunk index.
        index: usize,
        /// The scheme byte.
        scheme: u8,
    },
    /// A chunk is empty or larger than [`MAX_CHUNK_BYTES`].
    #[error("chunk {index} declares {size} uncompressed bytes (1 to {MAX_CHUNK_BYTES} allowed)")]
    ChunkSize {
        /// Chunk index.
        index: usize,
        /// The declared size.
        size: usize,
    },
    /// A chunk's data does not decompress to its declared size.
    #[error("chunk {index} does not decompress to its declared {size} bytes")]
    Decompress {
        /// Chunk index.
        index: usize,
        /// The declared size.
        size: usize,
    },
    /// No chunk at all.
    #[error("xorb has no chunks")]
    Empty,
    /// The chunks hash to another xorb hash than the one named.
    #[error("xorb hash is `{actual}`, not `{claimed}`")]
    HashMismatch {
        /// The hash in the URL.
        claimed: String,
        /// The hash of the chunks received.
        actual: String,
    },
    /// The footer contradicts the chunks.
    #[error("xorb footer is malformed or does not match its chunks: {reason}")]
    Footer {
        /// What does not match.
        reason: &'static str,
    },
}

/// Parses and checks a whole serialized xorb against the hash it was uploaded under, and
/// returns its chunk index. Memory: one decompressed chunk at a time besides the input.
pub fn validate(bytes: &[u8], claimed: &XetHash) -> Result<Vec<ChunkEntry>, XorbError> {
    let mut chunks = Vec::new();
    let mut offset = 0usize;
    let mut scratch = Vec::with_capacity(MAX_CHUNK_BYTES + 1);
    while offset < bytes.len() && !bytes[offset..].starts_with(FOOTER_IDENT) {
        let index = chunks.len();
        let header = bytes
            .get(offset..offset + HEADER_BYTES)
            .ok_or(XorbError::Truncated { offset })?;
        if header[0] != 0 {
            return Err(XorbError::Version {
                index,
                version: header[0],
            });
        }
        let compressed = u24(&header[1..4]);
        let scheme = header[4];
        let unpacked = u24(&header[5..8]);
        if unpacked == 0 || unpacked > MAX_CHUNK_BYTES {
            return Err(XorbError::ChunkSize {
                index,
                size: unpacked,
            });
        }
        let data_start = offset + HEADER_BYTES;
        let data = bytes
            .get(data_start..data_start + compressed)
            .ok_or(XorbError::Truncated {
                offset: bytes.len(),
            })?;
        decompress(data, scheme, unpacked, &mut scratch).map_err(|error| match error {
            DecompressError::Scheme => XorbError::Scheme { index, scheme },
            DecompressError::Size => XorbError::Decompress {
                index,
                size: unpacked,
            },
        })?;
        let end = data_start + compressed;
        chunks.push(ChunkEntry {
            hash: hash::chunk_hash(&scratch),
            start: offset as u32,
            end: end as u32,
            unpacked: unpacked as u32,
        });
        offset = end;
    }
    if chunks.is_empty() {
        return Err(XorbError::Empty);
    }
    let pairs: Vec<(XetHash, u64)> = chunks
        .iter()
        .map(|c| (c.hash, u64::from(c.unpacked)))
        .collect();
    let actual = hash::xorb_hash(&pairs);
    if actual != *claimed {
        return Err(XorbError::HashMismatch {
            claimed: claimed.hex(),
            actual: actual.hex(),
        });
    }
    if offset < bytes.len() {
        check_footer(&bytes[offset..], &actual, &chunks)?;
    }
    Ok(chunks)
}

/// A xorb serialized for upload: its hash, its bytes as pieces (chunk headers, slices of the
/// file's own buffer, the footer) and their total length.
#[derive(Debug, Clone)]
pub struct XorbBody {
    /// The xorb's hash (the Merkle root over its chunks).
    pub hash: XetHash,
    /// The serialized xorb, in order.
    pub pieces: Vec<Bytes>,
    /// Total bytes of the pieces.
    pub len: u64,
}

/// Serializes the chunks `ranges` of `data` (with their hashes) as a xorb: each chunk stored
/// as it is (scheme 0: activations and weights are floats, which LZ4 barely shrinks, and a
/// stored chunk costs no CPU and no copy — its piece is a slice of `data`), then the footer
/// `xet-core` writes (version 1: the xorb hash, the chunk hashes, the stored and unpacked end
/// offsets of every chunk, a zero nonce) and its length.
pub fn serialize(data: &Bytes, chunks: &[(XetHash, Range<usize>)]) -> XorbBody {
    let pairs: Vec<(XetHash, u64)> = chunks
        .iter()
        .map(|(hash, range)| (*hash, range.len() as u64))
        .collect();
    let hash = hash::xorb_hash(&pairs);
    let mut pieces = Vec::with_capacity(2 * chunks.len() + 1);
    let (mut stored, mut unpacked) = (Vec::new(), Vec::new());
    let (mut stored_end, mut unpacked_end) = (0u32, 0u32);
    for (_, range) in chunks {
        let length = range.len() as u32;
        let mut header = [0u8; HEADER_BYTES];
        header[1..4].copy_from_slice(&length.to_le_bytes()[..3]);
        header[5..8].copy_from_slice(&length.to_le_bytes()[..3]);
        pieces.push(Bytes::copy_from_slice(&header));
        pieces.push(data.slice(range.clone()));
        stored_end += HEADER_BYTES as u32 + length;
        unpacked_end += length;
        stored.push(stored_end);
        unpacked.push(unpacked_end);
    }
    let count = chunks.len() as u32;
    let mut footer = Vec::with_capacity(112 + 40 * chunks.len());
    footer.extend_from_slice(FOOTER_IDENT);
    footer.push(1);
    footer.extend_from_slice(&hash.0);
    footer.extend_from_slice(HASHES_IDENT);
    footer.push(0);
    footer.extend_from_slice(&count.to_le_bytes());
    for (chunk, _) in chunks {
        footer.extend_from_slice(&chunk.0);
    }
    let boundaries_start = footer.len();
    footer.extend_from_slice(BOUNDARIES_IDENT);
    footer.push(1);
    footer.extend_from_slice(&count.to_le_bytes());
    for offset in stored.iter().chain(&unpacked) {
        footer.extend_from_slice(&offset.to_le_bytes());
    }
    footer.extend_from_slice(&count.to_le_bytes());
    // Offsets from the footer's end (past the 16-byte nonce buffer) back to each section.
    let end = footer.len() + 8 + 16;
    footer.extend_from_slice(&((end - 40) as u32).to_le_bytes());
    footer.extend_from_slice(&((end - boundaries_start) as u32).to_le_bytes());
    footer.extend_from_slice(&[0; 16]);
    let info_length = footer.len() as u32;
    footer.extend_from_slice(&info_length.to_le_bytes());
    pieces.push(Bytes::from(footer));
    let len = pieces.iter().map(|p| p.len() as u64).sum();
    XorbBody { hash, pieces, len }
}

/// Checks the start of `xet-core`'s footer: the xorb hash and every chunk hash it lists.
fn check_footer(footer: &[u8], xorb: &XetHash, chunks: &[ChunkEntry]) -> Result<(), XorbError> {
    let fail = |reason| XorbError::Footer { reason };
    // ident (7), version (1), xorb hash (32), hashes ident (7), version (1), count (4)
    let fixed = footer.get(..52).ok_or(fail("footer is too short"))?;
    if fixed[8..40] != xorb.0 {
        return Err(fail("footer names another xorb hash"));
    }
    if &fixed[40..47] != HASHES_IDENT {
        return Err(fail("footer has no chunk hash section"));
    }
    if u32::from_le_bytes(fixed[48..52].try_into().expect("4 bytes")) as usize != chunks.len() {
        return Err(fail("footer counts another number of chunks"));
    }
    let hashes = footer
        .get(52..52 + 32 * chunks.len())
        .ok_or(fail("footer's chunk hashes are cut short"))?;
    for (listed, chunk) in hashes.chunks_exact(32).zip(chunks) {
        if listed != chunk.hash.0 {
            return Err(fail("footer lists another chunk hash"));
        }
    }
    Ok(())
}

/// Why one chunk could not be decompressed.
#[derive(Debug, PartialEq, Eq)]
pub enum DecompressError {
    /// Unknown scheme byte.
    Scheme,
    /// The data is corrupt or not of the declared size.
    Size,
}

/// Decompresses one chunk's data into `out` (cleared first), reading at most one byte more
/// than the declared size, so a compression bomb costs nothing.
pub fn decompress(
    data: &[u8],
    scheme: u8,
    unpacked: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    out.clear();
    match scheme {
        0 => out.extend_from_slice(data),
        1 => lz4_frame(data, unpacked, out)?,
        2 => {
            let mut grouped = Vec::with_capacity(unpacked + 1);
            lz4_frame(data, unpacked, &mut grouped)?;
            if grouped.len() == unpacked {
                ungroup4(&grouped, out);
            }
        }
        _ => return Err(DecompressError::Scheme),
    }
    if out.len() != unpacked {
        return Err(DecompressError::Size);
    }
    Ok(())
}

fn lz4_frame(data: &[u8], unpacked: usize, out: &mut Vec<u8>) -> Result<(), DecompressError> {
    lz4_flex::frame::FrameDecoder::new(data)
        .take(unpacked as u64 + 1)
        .read_to_end(out)
        .map_err(|_| DecompressError::Size)?;
    Ok(())
}

/// Undoes byte grouping: the input holds every 4th byte from offset 0, then from 1, 2 and 3
/// (the first `len % 4` groups one byte longer).
fn ungroup4(grouped: &[u8], out: &mut Vec<u8>) {
    let len = grouped.len();
    let (base, extra) = (len / 4, len % 4);
    let mut starts = [0usize; 4];
    for group in 1..4 {
        starts[group] = starts[group - 1] + base + usize::from(group - 1 < extra);
    }
    out.resize(len, 0);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = grouped[starts[i % 4] + i / 4];
    }
}

fn u24(bytes: &[u8]) -> usize {
    usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A xorb of `parts`, each stored with `scheme`.
    pub fn xorb_of(parts: &[&[u8]], scheme: u8) -> (Vec<u8>, XetHash) {
        let mut out = Vec::new();
        let mut pairs = Vec::new();
        for part in parts {
            let data = match scheme {
                1 => {
                    let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                    std::io::Write::write_all(&mut encoder, part).unwrap();
                    encoder.finish().unwrap()
                }
                _ => part.to_vec(),
            };
            out.push(0);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes()[..3]);
            out.push(scheme);
            out.extend_from_slice(&(part.len() as u32).to_le_bytes()[..3]);
            out.extend_from_slice(&data);
            pairs.push((hash::chunk_hash(part), part.len() as u64));
        }
        (out, hash::xorb_hash(&pairs))
    }

    #[test]
    fn valid_xorbs_parse_with_every_scheme() {
        for scheme in [0, 1] {
            let (bytes, hash) = xorb_of(&[b"abc", b"defgh"], scheme);
            let chunks = validate(&bytes, &hash).unwrap();
            assert_eq!(chunks.len(), 2);
            assert_eq!(chunks[1].unpacked, 5);
            assert_eq!(chunks[1].end as usize, bytes.len());
        }
    }

    #[test]
    fn hostile_xorbs_are_refused() {
        let (bytes, hash) = xorb_of(&[b"abc", b"defgh"], 1);
        assert!(matches!(
            validate(&bytes[..bytes.len() - 1], &hash),
            Err(XorbError::Truncated { .. })
        ));
        assert!(matches!(
            validate(&bytes, &hash::chunk_hash(b"x")),
            Err(XorbError::HashMismatch { .. })
        ));
        assert_eq!(validate(&[], &hash), Err(XorbError::Empty));
        let mut bad = bytes.clone();
        bad[4] = 9;
        assert!(matches!(
            validate(&bad, &hash),
            Err(XorbError::Scheme { .. })
        ));
    }

    #[test]
    fn serialized_xorbs_validate_with_their_footer() {
        let data = Bytes::from((0..300u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let chunks = vec![
            (hash::chunk_hash(&data[..100]), 0..100),
            (hash::chunk_hash(&data[100..]), 100..300),
        ];
        let body = serialize(&data, &chunks);
        let bytes: Vec<u8> = body.pieces.concat();
        assert_eq!(bytes.len() as u64, body.len);
        let entries = validate(&bytes, &body.hash).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.unpacked).collect::<Vec<_>>(),
            [100, 200]
        );
        // The trailing length covers the footer exactly, and its offsets lead back to the
        // sections they name.
        let info = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let footer = &bytes[bytes.len() - 4 - info..bytes.len() - 4];
        assert_eq!(&footer[..7], FOOTER_IDENT);
        let word = |at: usize| u32::from_le_bytes(footer[at..at + 4].try_into().unwrap()) as usize;
        let (hashes, bounds) = (word(footer.len() - 24), word(footer.len() - 20));
        assert_eq!(&footer[footer.len() - hashes..][..7], HASHES_IDENT);
        assert_eq!(&footer[footer.len() - bounds..][..7], BOUNDARIES_IDENT);
    }

    #[test]
    fn byte_grouping_round_trips() {
        let data: Vec<u8> = (0..11u8).collect();
        let mut grouped = Vec::new();
        for group in 0..4 {
            grouped.extend(data.iter().skip(group).step_by(4));
        }
        let mut out = Vec::new();
        ungroup4(&grouped, &mut out);
        assert_eq!(out, data);
    }
}
