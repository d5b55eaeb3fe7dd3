//! What one Xet upload sends: the file cut into content-defined chunks, each chunk found in a
//! xorb the CAS already stores (known from this client's earlier uploads or the global dedup
//! query) or packed into a new xorb, and the file described as terms over those xorbs.
//!
//! Xorbs are cut where the content says (after a chunk whose hash is `0 mod` [`XORB_CUT`]) or
//! where a run of stored chunks interrupts (the size limits are rarely reached). So the same
//! bytes pack into the same xorbs whatever else is stored, and an edit changes only the xorbs
//! around it: a rerun after a crash, or an edited artifact in a fresh process, finds the
//! xorbs sent before through the global dedup query (each xorb's first chunk is flagged for the
//! index, and it is among the chunks asked about) and sends only what is new.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use rayon::prelude::*;

use crate::hub::xet::chunking;
use crate::hub::xet::hash::{self, XetHash};
use crate::hub::xet::shard::{FileInfo, NewXorb, Term, XorbInfo};
use crate::hub::xet::xorb::{self, MAX_XORB_BYTES, MAX_XORB_CHUNKS, XorbBody};

/// A file cut into chunks: each chunk's hash and byte range.
pub struct Chunked {
    /// The file's bytes.
    pub data: Bytes,
    /// Hash and range of every chunk, in order.
    pub chunks: Vec<(XetHash, Range<usize>)>,
}

impl Chunked {
    /// Cuts `data` into chunks and hashes them (on the rayon pool: the hashes are independent).
    pub fn new(data: Bytes) -> Self {
        let ends = chunking::boundaries(&data);
        let ranges: Vec<Range<usize>> = ends
            .iter()
            .scan(0, |start, &end| {
                let range = *start..end;
                *start = end;
                Some(range)
            })
            .collect();
        let chunks = ranges
            .into_par_iter()
            .map(|range| (hash::chunk_hash(&data[range.clone()]), range))
            .collect();
        Self { data, chunks }
    }

    /// The file's Xet hash.
    pub fn file_hash(&self) -> XetHash {
        let pairs: Vec<(XetHash, u64)> = self
            .chunks
            .iter()
            .map(|(h, r)| (*h, r.len() as u64))
            .collect();
        hash::file_hash(&pairs)
    }

    /// The chunks every CAS indexes for the global dedup query, in order: the first, and those
    /// whose hash is `0 mod 1024` (the specification's eligibility rule).
    pub fn indexed_chunks(&self) -> impl Iterator<Item = &XetHash> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(i, (h, _))| *i == 0 || h.modulo(1024) == 0)
            .map(|(_, (h, _))| h)
    }

    /// The chunks that start a xorb by content, in order (flagged for the index when that xorb
    /// was uploaded).
    pub fn xorb_starts(&self) -> impl Iterator<Item = &XetHash> {
        self.chunks
            .windows(2)
            .filter(|pair| ends_xorb(&pair[0].0))
            .map(|pair| &pair[1].0)
    }
}

/// One in this many chunks ends a xorb by content: xorbs of ≈ 8 MiB on average (chunks average
/// 64 KiB), far below the limits, so the limits rarely cut.
pub const XORB_CUT: u64 = 128;

/// Whether a xorb ends after this chunk (a word of its hash other than the one the dedup
/// eligibility rule reads).
fn ends_xorb(chunk: &XetHash) -> bool {
    u64::from_le_bytes(chunk.0[16..24].try_into().expect("8-byte word")) % XORB_CUT == 0
}

/// Chunks known to be stored in the CAS: chunk hash → (xorb, index in it). Bounded: past
/// `capacity` entries the oldest half of what it learnt is forgotten (dedup is an
/// optimisation; forgetting costs bytes sent, never correctness).
pub struct KnownChunks {
    map: HashMap<XetHash, (XetHash, u32)>,
    order: std::collections::VecDeque<XetHash>,
    capacity: usize,
}

impl KnownChunks {
    /// An empty index of at most `capacity` chunks.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Where a chunk is stored, if known.
    pub fn get(&self, chunk: &XetHash) -> Option<(XetHash, u32)> {
        self.map.get(chunk).copied()
    }

    /// Records that `xorb` stores `chunks` (in order).
    pub fn add_xorb(&mut self, xorb: XetHash, chunks: impl IntoIterator<Item = XetHash>) {
        for (index, chunk) in chunks.into_iter().enumerate() {
            if self.map.insert(chunk, (xorb, index as u32)).is_none() {
                self.order.push_back(chunk);
            }
        }
        if self.map.len() > self.capacity {
            let keep = self.capacity / 2;
            while self.order.len() > keep {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    /// How many chunks are known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Where one chunk of the file will be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// A xorb the CAS stores already.
    Stored(XetHash, u32),
    /// The `n`-th new xorb of this upload.
    New(usize, u32),
}

/// A new xorb of an upload.
pub struct NewXorbUpload {
    /// Its bytes, serialized (pieces borrow the file's bytes).
    pub body: XorbBody,
    /// Its chunk hashes, in order (for the index once it is stored).
    pub chunks: Vec<XetHash>,
    /// Its content bytes.
    pub content: u64,
    /// The shard that registers it once stored: no files, this xorb, its first chunk flagged
    /// for the global dedup index.
    pub registration: Bytes,
}

/// An upload worked out: the new xorbs to send, then the shard describing the file.
pub struct UploadPlan {
    /// The new xorbs.
    pub xorbs: Vec<NewXorbUpload>,
    /// The shard to upload once every new xorb is stored.
    pub shard: Vec<u8>,
    /// The file's Xet hash.
    pub file_hash: XetHash,
    /// Chunk bytes found in stored xorbs (not sent).
    pub deduplicated: u64,
}

/// Packs the chunks no xorb stores into new xorbs (cut by content, at a run of stored chunks,
/// or at [`MAX_XORB_BYTES`] / [`MAX_XORB_CHUNKS`]; a chunk repeated within the file is stored
/// once), describes the file as terms — runs of consecutive chunks of one xorb — with their
/// verification hashes and `sha256` (lowercase hex), and writes the shard.
pub fn plan(file: &Chunked, sha256: &str, known: &KnownChunks) -> UploadPlan {
    let mut homes = Vec::with_capacity(file.chunks.len());
    let mut packed: Vec<Vec<usize>> = Vec::new();
    let mut packed_bytes = 0usize;
    let mut seen: HashMap<XetHash, Home> = HashMap::new();
    let mut deduplicated = 0u64;
    let mut cut = true;
    for (i, (chunk, range)) in file.chunks.iter().enumerate() {
        if let Some((xorb, index)) = known.get(chunk) {
            homes.push(Home::Stored(xorb, index));
            deduplicated += range.len() as u64;
            cut = true;
            continue;
        }
        if let Some(home) = seen.get(chunk) {
            homes.push(*home);
            continue;
        }
        let full = packed.last().is_none_or(|x| {
            x.len() == MAX_XORB_CHUNKS || packed_bytes + range.len() > MAX_XORB_BYTES
        });
        if cut || full {
            packed.push(Vec::new());
            packed_bytes = 0;
        }
        let open = packed.len() - 1;
        let current = &mut packed[open];
        let home = Home::New(open, current.len() as u32);
        current.push(i);
        packed_bytes += range.len();
        seen.insert(*chunk, home);
        homes.push(home);
        cut = ends_xorb(chunk);
    }
    let bodies: Vec<XorbBody> = packed
        .iter()
        .map(|members| {
            let chunks: Vec<(XetHash, Range<usize>)> =
                members.iter().map(|&i| file.chunks[i].clone()).collect();
            xorb::serialize(&file.data, &chunks)
        })
        .collect();
    let file_hash = file.file_hash();
    let info = file_info(file, &homes, &bodies, file_hash, sha256);
    let new_xorbs: Vec<NewXorb> = packed
        .iter()
        .zip(&bodies)
        .map(|(members, body)| NewXorb {
            info: XorbInfo {
                xorb: body.hash,
                chunks: members
                    .iter()
                    .map(|&i| (file.chunks[i].0, file.chunks[i].1.len() as u32))
                    .collect(),
            },
            stored_bytes: body.len as u32,
            // The first chunk: the file's first when the xorb starts the file, and what a
            // rerun asks the dedup query about.
            indexed: vec![0],
        })
        .collect();
    let shard = crate::hub::xet::shard::upload_body(std::slice::from_ref(&info), &new_xorbs);
    let xorbs = bodies
        .into_iter()
        .zip(new_xorbs)
        .map(|(body, new)| NewXorbUpload {
            chunks: new.info.chunks.iter().map(|c| c.0).collect(),
            content: new.info.chunks.iter().map(|c| u64::from(c.1)).sum(),
            registration: Bytes::from(crate::hub::xet::shard::upload_body(
                &[],
                std::slice::from_ref(&new),
            )),
            body,
        })
        .collect();
    UploadPlan {
        xorbs,
        shard,
        file_hash,
        deduplicated,
    }
}

/// The file's shard entry: consecutive chunks in one xorb merged into one term.
fn file_info(
    file: &Chunked,
    homes: &[Home],
    xorbs: &[XorbBody],
    file_hash: XetHash,
    sha256: &str,
) -> FileInfo {
    let mut terms: Vec<Term> = Vec::new();
    let mut verification = Vec::new();
    let mut term_chunks: Vec<XetHash> = Vec::new();
    for ((chunk, range), home) in file.chunks.iter().zip(homes) {
        let (xorb, index) = match *home {
            Home::Stored(xorb, index) => (xorb, index),
            Home::New(n, index) => (xorbs[n].hash, index),
        };
        match terms.last_mut() {
            Some(term) if term.xorb == xorb && term.end == index => {
                term.end += 1;
                term.bytes += range.len() as u32;
            }
            _ => {
                if !term_chunks.is_empty() {
                    verification.push(hash::verification_hash(term_chunks.drain(..)));
                }
                terms.push(Term {
                    xorb,
                    start: index,
                    end: index + 1,
                    bytes: range.len() as u32,
                });
            }
        }
        term_chunks.push(*chunk);
    }
    if !term_chunks.is_empty() {
        verification.push(hash::verification_hash(term_chunks.drain(..)));
    }
    FileInfo {
        file_hash,
        terms,
        verification: Some(verification),
        sha256: XetHash::from_hex(sha256).map(|h| h.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::xet::chunking::tests::noise;

    #[test]
    fn a_second_upload_sends_only_the_changed_chunks() {
        let data = noise(3 << 20, 1);
        let first = Chunked::new(Bytes::from(data.clone()));
        let mut known = KnownChunks::new(1 << 20);
        let plan1 = plan(&first, &"0".repeat(64), &known);
        assert_eq!(plan1.deduplicated, 0);
        for xorb in &plan1.xorbs {
            known.add_xorb(xorb.body.hash, xorb.chunks.iter().copied());
        }
        let mut edited = data;
        edited[1_500_000..1_500_100].copy_from_slice(&noise(100, 2));
        let second = Chunked::new(Bytes::from(edited));
        let plan2 = plan(&second, &"0".repeat(64), &known);
        let sent: u64 = plan2.xorbs.iter().map(|x| x.body.len).sum();
        assert!(sent < 300_000, "sent {sent} of {} bytes", 3 << 20);
        let shard = crate::hub::xet::shard::parse(&plan2.shard).unwrap();
        let file = &shard.files[0];
        assert_eq!(file.file_hash, second.file_hash());
        assert!(file.terms.len() >= 3, "{:?}", file.terms);
        let bytes: u64 = file.terms.iter().map(|t| u64::from(t.bytes)).sum();
        assert_eq!(bytes, 3 << 20);
    }

    #[test]
    fn repeated_chunks_are_stored_once_and_xorbs_respect_their_limits() {
        // 200 copies of one 8 KiB block of noise: constant-period data cuts into equal chunks.
        let block = noise(chunking::MAX_CHUNK, 3);
        let data: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(40 * block.len())
            .collect();
        let file = Chunked::new(Bytes::from(data));
        let plan = plan(&file, &"0".repeat(64), &KnownChunks::new(16));
        let stored: usize = plan.xorbs.iter().map(|x| x.chunks.len()).sum();
        let distinct: std::collections::HashSet<_> = file.chunks.iter().map(|c| c.0).collect();
        assert_eq!(stored, distinct.len());
        assert!(
            plan.xorbs
                .iter()
                .all(|x| x.body.len <= (MAX_XORB_BYTES + (1 << 20)) as u64)
        );
        let shard = crate::hub::xet::shard::parse(&plan.shard).unwrap();
        assert_eq!(shard.xorbs.len(), plan.xorbs.len());
    }

    #[test]
    fn xorbs_are_cut_by_content_so_stored_ones_and_edits_leave_the_others_as_they_were() {
        let data = noise(48 << 20, 4);
        let file = Chunked::new(Bytes::from(data.clone()));
        let first = plan(&file, &"0".repeat(64), &KnownChunks::new(1 << 20));
        let hashes: Vec<XetHash> = first.xorbs.iter().map(|x| x.body.hash).collect();
        assert!(hashes.len() >= 3, "{} xorbs", hashes.len());
        // A rerun that finds every other xorb stored packs the rest exactly as before.
        let mut known = KnownChunks::new(1 << 20);
        for xorb in first.xorbs.iter().step_by(2) {
            known.add_xorb(xorb.body.hash, xorb.chunks.iter().copied());
        }
        let rerun = plan(&file, &"0".repeat(64), &known);
        let again: Vec<XetHash> = rerun.xorbs.iter().map(|x| x.body.hash).collect();
        let expected: Vec<XetHash> = hashes.iter().skip(1).step_by(2).copied().collect();
        assert_eq!(again, expected);
        // An edit in the middle, nothing known: the xorbs away from it are the same.
        let mut edited = data;
        edited[24 << 20..(24 << 20) + 1000].copy_from_slice(&noise(1000, 5));
        let other = plan(
            &Chunked::new(Bytes::from(edited)),
            &"0".repeat(64),
            &KnownChunks::new(1 << 20),
        );
        let changed = other
            .xorbs
            .iter()
            .filter(|x| !hashes.contains(&x.body.hash))
            .count();
        assert!(
            changed <= 2,
            "{changed} of {} xorbs changed",
            other.xorbs.len()
        );
        // Each registration lists its xorb with the first chunk flagged for the index.
        let registered = crate::hub::xet::shard::parse(&first.xorbs[1].registration).unwrap();
        assert!(registered.files.is_empty());
        assert_eq!(
            registered.indexed,
            vec![(first.xorbs[1].chunks[0], first.xorbs[1].body.hash)]
        );
    }

    #[test]
    fn the_index_forgets_the_oldest_half_past_its_capacity() {
        let mut known = KnownChunks::new(4);
        let hashes: Vec<XetHash> = (0..5u8).map(|i| hash::chunk_hash(&[i])).collect();
        known.add_xorb(XetHash([9; 32]), hashes.iter().copied());
        assert_eq!(known.len(), 2);
        assert!(known.get(&hashes[4]).is_some() && known.get(&hashes[0]).is_none());
    }
}
