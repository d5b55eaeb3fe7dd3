//! The Xet side of the store: xorbs, the files shards describe, and the indexes between them.
//!
//! Layout under the store root (every file written crash-safe through
//! [`Store::write_file_atomic`] or [`Store::install_object`]):
//!
//! ```text
//! xet/xorbs/<aa>/<xorb>          a xorb as uploaded (chunks, then the client's footer)
//! xet/xorbs/<aa>/<xorb>.chunks   its chunk index (hash, byte range, length), written first
//! xet/files/<aa>/<file>.json     a file: size, sha256 and terms (xorb, chunk range, bytes)
//! xet/sha256/<aa>/<sha256>       the Xet file hash of the content with that sha256
//! xet/chunks/<aa>/<chunk>        a xorb holding that chunk (the chunks clients ask the global
//!                                dedup query about: `0 mod 1024`, each file's first, and
//!                                those a shard flags, as clients flag each xorb's first)
//! ```
//!
//! A Xet file is stored once, as its xorbs: its record is written only after its content, read
//! from them, matched the sha256 the shard declares, and [`Store::object_size`] and the
//! `resolve/` and LFS download paths fall back to the record (reading through [`read_range`])
//! where `objects/` has no file, so commits, listings, `verify` and LFS clients see a Xet upload
//! exactly like an LFS one. Each record is written after what it points to, so a crash leaves
//! at most unreferenced files, never a dangling record.

use std::path::PathBuf;

use bytes::Bytes;
use sha2::Digest as _;

use super::hash::{self, XetHash};
use super::shard::{Shard, Term};
use super::xorb::{self, ChunkEntry};
use crate::hub::server::store::{Store, StoreError, read_dir_or_empty};

/// Chunks whose hash is `0 mod 1024` are the ones clients ask the global dedup query about.
pub const GLOBAL_DEDUP_MODULUS: u64 = 1024;

/// A file as a shard described it, once checked (its content stays in the xorbs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// Bytes of the content.
    pub size: u64,
    /// sha256 of the content (the object's name in `objects/`, the LFS oid).
    pub sha256: String,
    /// The terms, in order.
    pub terms: Vec<Term>,
}

/// Why a shard is refused.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A term or CAS entry names a xorb that was never uploaded.
    #[error("shard references xorb `{xorb}`, which was not uploaded")]
    MissingXorb {
        /// The xorb.
        xorb: String,
    },
    /// A term's chunk range is empty or beyond the xorb's chunks.
    #[error("term names chunks {start}..{end} of xorb `{xorb}`, which has {chunks}")]
    ChunkRange {
        /// The xorb.
        xorb: String,
        /// First chunk named.
        start: u32,
        /// One past the last.
        end: u32,
        /// Chunks the xorb has.
        chunks: usize,
    },
    /// Something the shard declares does not match the stored chunks.
    #[error("shard does not match the stored data: {what}")]
    Mismatch {
        /// What differs.
        what: String,
    },
    /// A file comes without the sha256 extension a Git repo needs.
    #[error("file `{file}` has no sha256 metadata extension (needed for Git repos)")]
    NoSha256 {
        /// The file hash.
        file: String,
    },
    /// A stored record cannot be read.
    #[error("stored xet record `{}` is corrupt", path.display())]
    Corrupt {
        /// The record.
        path: PathBuf,
    },
    /// The filesystem failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<std::io::Error> for CasError {
    fn from(error: std::io::Error) -> Self {
        Self::Store(StoreError::Io(error))
    }
}

fn path(store: &Store, kind: &str, name: &str, suffix: &str) -> PathBuf {
    store
        .root()
        .join("xet")
        .join(kind)
        .join(&name[..2])
        .join(format!("{name}{suffix}"))
}

/// Where a xorb's bytes live.
pub fn xorb_path(store: &Store, xorb: &XetHash) -> PathBuf {
    path(store, "xorbs", &xorb.hex(), "")
}

/// Whether a xorb is stored (its bytes are written after its index, so they mark it).
pub fn has_xorb(store: &Store, xorb: &XetHash) -> bool {
    xorb_path(store, xorb).is_file()
}

/// A stored xorb's chunk index, `None` if the xorb is not stored.
pub fn xorb_index(store: &Store, xorb: &XetHash) -> Result<Option<Vec<ChunkEntry>>, CasError> {
    if !has_xorb(store, xorb) {
        return Ok(None);
    }
    let index = path(store, "xorbs", &xorb.hex(), ".chunks");
    let bytes = fs_err::read(&index)?;
    ChunkEntry::parse_index(&bytes)
        .map(Some)
        .ok_or(CasError::Corrupt { path: index })
}

/// Stores a validated xorb: index, bytes, then dedup entries. Returns whether it was new.
pub fn install_xorb(
    store: &Store,
    xorb: &XetHash,
    bytes: &[u8],
    chunks: &[ChunkEntry],
) -> Result<bool, CasError> {
    if has_xorb(store, xorb) {
        return Ok(false);
    }
    let index: Vec<u8> = chunks.iter().flat_map(|c| c.to_bytes()).collect();
    store.write_file_atomic(&path(store, "xorbs", &xorb.hex(), ".chunks"), &index)?;
    store.write_file_atomic(&xorb_path(store, xorb), bytes)?;
    for chunk in chunks
        .iter()
        .filter(|c| c.hash.modulo(GLOBAL_DEDUP_MODULUS) == 0)
    {
        let entry = path(store, "chunks", &chunk.hash.hex(), "");
        store.write_file_atomic(&entry, xorb.hex().as_bytes())?;
    }
    Ok(true)
}

/// The xorb holding a global-dedup-eligible chunk, if any.
pub fn xorb_of_chunk(store: &Store, chunk: &XetHash) -> Option<XetHash> {
    let text = std::fs::read_to_string(path(store, "chunks", &chunk.hex(), "")).ok()?;
    XetHash::from_hex(text.trim())
}

/// Whether the global dedup query answers for a stored xorb (its first chunk is indexed to it).
pub fn is_indexed(store: &Store, xorb: &XetHash) -> bool {
    matches!(xorb_index(store, xorb), Ok(Some(index))
        if index.first().and_then(|c| xorb_of_chunk(store, &c.hash)).as_ref() == Some(xorb))
}

/// A file's record, `None` if no shard described it.
pub fn file_record(store: &Store, file: &XetHash) -> Result<Option<FileRecord>, CasError> {
    let record = path(store, "files", &file.hex(), ".json");
    match std::fs::read(&record) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| CasError::Corrupt { path: record }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The Xet file hash of the content with this sha256, if it arrived through Xet.
pub fn file_of_sha256(store: &Store, sha256: &str) -> Option<XetHash> {
    if sha256.len() != 64 {
        return None;
    }
    let text = std::fs::read_to_string(path(store, "sha256", sha256, "")).ok()?;
    XetHash::from_hex(text.trim())
}

/// Checks a shard against the stored xorbs, indexes the chunks it flags, and records its files
/// once each one's content matches its sha256 (a shard may list xorbs only). Blocking: reads
/// and hashes every byte of every new file. Returns whether any file was new.
pub fn apply_shard(store: &Store, shard: &Shard) -> Result<bool, CasError> {
    for listed in &shard.xorbs {
        let index = xorb_index(store, &listed.xorb)?.ok_or_else(|| CasError::MissingXorb {
            xorb: listed.xorb.hex(),
        })?;
        let stored = index.iter().map(|c| (c.hash, c.unpacked));
        if !stored.eq(listed.chunks.iter().copied()) {
            return Err(CasError::Mismatch {
                what: format!("xorb `{}` is listed with other chunks", listed.xorb.hex()),
            });
        }
    }
    // The chunks the client flagged (its xorbs' first, so that a rerun finds them before
    // their file's shard exists): their xorbs are stored and list them, checked above.
    for (chunk, xorb) in &shard.indexed {
        if xorb_of_chunk(store, chunk).as_ref() != Some(xorb) {
            let entry = path(store, "chunks", &chunk.hex(), "");
            store.write_file_atomic(&entry, xorb.hex().as_bytes())?;
        }
    }
    let mut any_new = false;
    for file in &shard.files {
        let sha256 = file.sha256.ok_or_else(|| CasError::NoSha256 {
            file: file.file_hash.hex(),
        })?;
        // Stored like every Xet hash (`xet-core` builds it from the digest's big-endian
        // words), so its string form is the usual sha256 hex.
        let sha256 = XetHash(sha256).hex();
        let mut pairs = Vec::new();
        let mut indexes = Vec::with_capacity(file.terms.len());
        for (i, term) in file.terms.iter().enumerate() {
            let index = xorb_index(store, &term.xorb)?.ok_or_else(|| CasError::MissingXorb {
                xorb: term.xorb.hex(),
            })?;
            let range = chunk_range(term, &index)?;
            let bytes: u64 = range.iter().map(|c| u64::from(c.unpacked)).sum();
            if bytes != u64::from(term.bytes) {
                return Err(CasError::Mismatch {
                    what: format!(
                        "term {i} declares {} bytes, its chunks hold {bytes}",
                        term.bytes
                    ),
                });
            }
            if let Some(verification) = &file.verification
                && hash::verification_hash(range.iter().map(|c| c.hash)) != verification[i]
            {
                return Err(CasError::Mismatch {
                    what: format!("verification hash of term {i}"),
                });
            }
            pairs.extend(range.iter().map(|c| (c.hash, u64::from(c.unpacked))));
            indexes.push(index);
        }
        let actual = hash::file_hash(&pairs);
        if actual != file.file_hash {
            return Err(CasError::Mismatch {
                what: format!(
                    "file hash is `{}`, not `{}`",
                    actual.hex(),
                    file.file_hash.hex()
                ),
            });
        }
        if file_of_sha256(store, &sha256) == Some(file.file_hash) {
            continue;
        }
        let record = FileRecord {
            size: pairs.iter().map(|(_, len)| len).sum(),
            sha256: sha256.clone(),
            terms: file.terms.clone(),
        };
        check_sha256(store, &record)?;
        let record_path = path(store, "files", &file.file_hash.hex(), ".json");
        store.write_file_atomic(
            &record_path,
            &serde_json::to_vec(&record).map_err(StoreError::from)?,
        )?;
        let map = path(store, "sha256", &sha256, "");
        store.write_file_atomic(&map, file.file_hash.hex().as_bytes())?;
        // Clients ask the dedup query about a file's first chunk too, not only about chunks
        // that are `0 mod 1024`.
        let first = &file.terms[0];
        let first_chunk = indexes[0][first.start as usize].hash;
        let entry = path(store, "chunks", &first_chunk.hex(), "");
        store.write_file_atomic(&entry, first.xorb.hex().as_bytes())?;
        any_new = true;
    }
    Ok(any_new)
}

/// The chunks a term names, or why they do not exist.
pub fn chunk_range<'a>(term: &Term, index: &'a [ChunkEntry]) -> Result<&'a [ChunkEntry], CasError> {
    index
        .get(term.start as usize..term.end as usize)
        .filter(|range| !range.is_empty())
        .ok_or_else(|| CasError::ChunkRange {
            xorb: term.xorb.hex(),
            start: term.start,
            end: term.end,
            chunks: index.len(),
        })
}

/// Checks that the content a record describes hashes to its sha256.
fn check_sha256(store: &Store, record: &FileRecord) -> Result<(), CasError> {
    let mut hasher = sha2::Sha256::new();
    read_range(store, record, 0, record.size, |bytes| {
        hasher.update(&bytes);
        true
    })?;
    let actual = hex::encode(hasher.finalize());
    if actual != record.sha256 {
        return Err(CasError::Mismatch {
            what: format!("content sha256 is `{actual}`, not `{}`", record.sha256),
        });
    }
    Ok(())
}

/// The terms of a record that hold bytes of `start..end`, in order, each with the position of
/// its first byte in the file and the index of its xorb (its chunks checked to exist).
fn terms_within<'r>(
    store: &'r Store,
    record: &'r FileRecord,
    start: u64,
    end: u64,
) -> impl Iterator<Item = Result<(u64, &'r Term, Vec<ChunkEntry>), CasError>> + 'r {
    record
        .terms
        .iter()
        .scan(0u64, |position, term| {
            let at = *position;
            *position += u64::from(term.bytes);
            Some((at, term))
        })
        .filter(move |(at, term)| at + u64::from(term.bytes) > start && *at < end)
        .map(move |(at, term)| {
            let index = xorb_index(store, &term.xorb)?.ok_or_else(|| CasError::MissingXorb {
                xorb: term.xorb.hex(),
            })?;
            chunk_range(term, &index)?;
            Ok((at, term, index))
        })
}

/// Reads bytes `start..start + length` of a file from its xorbs, in order, handing each piece
/// to `emit` (which returns `false` to stop). Each xorb a term reads is mapped read-only —
/// stored xorbs never change (written to a temporary file, then renamed into place under their
/// hash) — and an uncompressed chunk is handed out as a slice of the mapping, so the only copy
/// is the caller's; a compressed one is decompressed first. Blocking.
pub fn read_range(
    store: &Store,
    record: &FileRecord,
    start: u64,
    length: u64,
    mut emit: impl FnMut(Bytes) -> bool,
) -> Result<(), CasError> {
    let end = start + length;
    for found in terms_within(store, record, start, end) {
        let (mut position, term, index) = found?;
        let chunks = &index[term.start as usize..term.end as usize];
        let corrupt = |what: &str| CasError::Mismatch {
            what: format!("stored xorb `{}`: {what}", term.xorb.hex()),
        };
        let file = std::fs::File::open(xorb_path(store, &term.xorb))?;
        let (first, last) = (chunks[0].start, chunks[chunks.len() - 1].end);
        let mapped = map_xorb(&file, u64::from(first), u64::from(last - first))
            .map_err(|_| corrupt("cannot be read"))?;
        for chunk in chunks {
            let next = position + u64::from(chunk.unpacked);
            if next > start && position < end {
                let raw =
                    mapped.slice((chunk.start - first) as usize..(chunk.end - first) as usize);
                if raw.len() < 8 {
                    return Err(corrupt("chunk shorter than its header"));
                }
                let data = if raw[4] == 0 && raw.len() - 8 == chunk.unpacked as usize {
                    raw.slice(8..)
                } else {
                    let mut out = Vec::with_capacity(chunk.unpacked as usize);
                    xorb::decompress(&raw[8..], raw[4], chunk.unpacked as usize, &mut out)
                        .map_err(|_| corrupt("chunk does not decompress"))?;
                    Bytes::from(out)
                };
                let from = start.saturating_sub(position) as usize;
                let to = (end.min(next) - position) as usize;
                if !emit(data.slice(from..to)) {
                    return Ok(());
                }
            }
            position = next;
            if position >= end {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Maps `len` bytes of a stored xorb from `offset`, read-only and pre-faulted.
#[allow(unsafe_code)]
fn map_xorb(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a mapping is only unsound if the file changes under it. Stored xorbs never do:
    // `install_xorb` writes each to a temporary file and renames it into place under its hash,
    // and nothing writes to or truncates a xorb file afterwards.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

/// Forgets the Xet files of these sha256s (no commit references them any more: their repo was
/// deleted), then removes the xorbs they used that no remaining file uses. Returns the files
/// forgotten and the bytes of xorbs removed.
///
/// Removal runs in the reverse order of writing: the sha256 map, then the record; a xorb's bytes
/// (which mark it stored), then its chunk index. A crash part-way leaves unreferenced files,
/// never a record without its xorbs. Xorbs no file record uses (an upload in progress, or one
/// interrupted before its shard, which a rerun can still find) are kept; so is a xorb an upload
/// in progress found through the dedup query, if a remaining record uses it — if none does, that
/// upload's shard is refused (missing xorb) and the client sends the xorb again.
pub fn forget_files(store: &Store, sha256s: &[&str]) -> Result<(u64, u64), CasError> {
    let mut candidates = std::collections::HashSet::new();
    let mut forgotten = 0;
    for sha256 in sha256s {
        let Some(file) = file_of_sha256(store, sha256) else {
            continue;
        };
        if let Ok(Some(record)) = file_record(store, &file) {
            candidates.extend(record.terms.iter().map(|t| t.xorb));
        }
        remove_if_present(&path(store, "sha256", sha256, ""))?;
        remove_if_present(&path(store, "files", &file.hex(), ".json"))?;
        forgotten += 1;
    }
    if candidates.is_empty() {
        return Ok((forgotten, 0));
    }
    for folder in read_dir_or_empty(&store.root().join("xet").join("files"))? {
        for entry in read_dir_or_empty(&folder)? {
            let Ok(bytes) = std::fs::read(&entry) else {
                continue;
            };
            if let Ok(record) = serde_json::from_slice::<FileRecord>(&bytes) {
                for term in &record.terms {
                    candidates.remove(&term.xorb);
                }
            }
        }
    }
    let mut freed = 0;
    for xorb in candidates {
        let bytes = xorb_path(store, &xorb);
        if let Ok(meta) = std::fs::metadata(&bytes) {
            remove_if_present(&bytes)?;
            freed += meta.len();
        }
        remove_if_present(&path(store, "xorbs", &xorb.hex(), ".chunks"))?;
    }
    Ok((forgotten, freed))
}

fn remove_if_present(file: &std::path::Path) -> Result<(), CasError> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The record of the content with this sha256, if it arrived through Xet.
pub fn record_of_sha256(store: &Store, sha256: &str) -> Option<FileRecord> {
    file_record(store, &file_of_sha256(store, sha256)?)
        .ok()
        .flatten()
}

/// One piece of a reconstruction: chunks of a xorb and where they lie in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The term (possibly cut to the requested range, at chunk boundaries).
    pub term: Term,
    /// First byte of the chunks in the xorb.
    pub first_byte: u64,
    /// Last byte (inclusive).
    pub last_byte: u64,
}

/// The pieces covering bytes `range` (inclusive; the whole file when `None`) of a file, and
/// how many bytes of the first piece come before the range.
pub fn reconstruct(
    store: &Store,
    record: &FileRecord,
    range: Option<(u64, u64)>,
) -> Result<(u64, Vec<Piece>), CasError> {
    let (want_start, want_end) = range.unwrap_or((0, record.size.saturating_sub(1)));
    let mut pieces = Vec::new();
    let mut skip = 0;
    for found in terms_within(store, record, want_start, want_end + 1) {
        let (position, term, index) = found?;
        let chunks = &index[term.start as usize..term.end as usize];
        let (mut first, mut last) = (None, 0usize);
        let mut at = position;
        for (i, chunk) in chunks.iter().enumerate() {
            let next = at + u64::from(chunk.unpacked);
            if next > want_start && at <= want_end {
                if first.is_none() {
                    first = Some(i);
                    if pieces.is_empty() {
                        skip = want_start.saturating_sub(at);
                    }
                }
                last = i;
            }
            at = next;
        }
        if let Some(first) = first {
            let selected = &chunks[first..=last];
            pieces.push(Piece {
                term: Term {
                    xorb: term.xorb,
                    start: term.start + first as u32,
                    end: term.start + last as u32 + 1,
                    bytes: selected.iter().map(|c| c.unpacked).sum(),
                },
                first_byte: u64::from(selected[0].start),
                last_byte: u64::from(selected[selected.len() - 1].end) - 1,
            });
        }
    }
    Ok((skip, pieces))
}
