//! What one Xet upload sends: the file cut into content-defined chunks, each chunk found in a
//! xorb the CAS already stores (known from this client's earlier uploads or the global dedup
//! query) or packed into a new xorb, and the file described as terms over those xorbs.

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

    /// The chunks to ask the global dedup query about, in order: the first, and those whose
    /// hash the CAS indexes (`hash mod 1024 = 0`, the specification's eligibility rule).
    pub fn dedup_candidates(&self) -> impl Iterator<Item = &XetHash> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(i, (h, _))| *i == 0 || h.modulo(1024) == 0)
            .map(|(_, (h, _))| h)
    }
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

/// An upload worked out: the new xorbs to send, then the shard describing the file.
pub struct UploadPlan {
    /// The new xorbs, serialized (pieces borrow the file's bytes).
    pub xorbs: Vec<XorbBody>,
    /// The chunk hashes of each new xorb, in order (for the index once it is stored).
    pub xorb_chunks: Vec<Vec<XetHash>>,
    /// The shard to upload once every new xorb is stored.
    pub shard: Vec<u8>,
    /// The file's Xet hash.
    pub file_hash: XetHash,
    /// Chunk bytes found in stored xorbs (not sent).
    pub deduplicated: u64,
}

/// Packs the chunks no xorb stores into new xorbs (at most [`MAX_XORB_BYTES`] and
/// [`MAX_XORB_CHUNKS`] each; a chunk repeated within the file is stored once), describes the
/// file as terms — runs of consecutive chunks of one xorb — with their verification hashes and
/// `sha256` (lowercase hex), and writes the shard.
pub fn plan(file: &Chunked, sha256: &str, known: &KnownChunks) -> UploadPlan {
    let mut homes = Vec::with_capacity(file.chunks.len());
    let mut packed: Vec<Vec<usize>> = Vec::new();
    let mut packed_bytes = 0usize;
    let mut seen: HashMap<XetHash, Home> = HashMap::new();
    let mut deduplicated = 0u64;
    for (i, (chunk, range)) in file.chunks.iter().enumerate() {
        if let Some((xorb, index)) = known.get(chunk) {
            homes.push(Home::Stored(xorb, index));
            deduplicated += range.len() as u64;
            continue;
        }
        if let Some(home) = seen.get(chunk) {
            homes.push(*home);
            continue;
        }
        let full = packed.last().is_none_or(|x| {
            x.len() == MAX_XORB_CHUNKS || packed_bytes + range.len() > MAX_XORB_BYTES
        });
        if full {
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
    }
    let xorbs: Vec<XorbBody> = packed
        .iter()
        .map(|members| {
            let chunks: Vec<(XetHash, Range<usize>)> =
                members.iter().map(|&i| file.chunks[i].clone()).collect();
            xorb::serialize(&file.data, &chunks)
        })
        .collect();
    let xorb_chunks: Vec<Vec<XetHash>> = packed
        .iter()
        .map(|members| members.iter().map(|&i| file.chunks[i].0).collect())
        .collect();
    let file_hash = file.file_hash();
    let info = file_info(file, &homes, &xorbs, file_hash, sha256);
    let new_xorbs: Vec<NewXorb> = packed
        .iter()
        .zip(&xorbs)
        .map(|(members, body)| NewXorb {
            info: XorbInfo {
                xorb: body.hash,
                chunks: members
                    .iter()
                    .map(|&i| (file.chunks[i].0, file.chunks[i].1.len() as u32))
                    .collect(),
            },
            stored_bytes: body.len as u32,
            file_starts: if members.first() == Some(&0) {
                vec![0]
            } else {
                Vec::new()
            },
        })
        .collect();
    let shard = crate::hub::xet::shard::upload_body(std::slice::from_ref(&info), &new_xorbs);
    UploadPlan {
        xorbs,
        xorb_chunks,
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
        for (body, chunks) in plan1.xorbs.iter().zip(&plan1.xorb_chunks) {
            known.add_xorb(body.hash, chunks.iter().copied());
        }
        let mut edited = data;
        edited[1_500_000..1_500_100].copy_from_slice(&noise(100, 2));
        let second = Chunked::new(Bytes::from(edited));
        let plan2 = plan(&second, &"0".repeat(64), &known);
        let sent: u64 = plan2.xorbs.iter().map(|x| x.len).sum();
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
        let stored: usize = plan.xorb_chunks.iter().map(Vec::len).sum();
        let distinct: std::collections::HashSet<_> = file.chunks.iter().map(|c| c.0).collect();
        assert_eq!(stored, distinct.len());
        assert!(
            plan.xorbs
                .iter()
                .all(|x| x.len <= (MAX_XORB_BYTES + (1 << 20)) as u64)
        );
        let shard = crate::hub::xet::shard::parse(&plan.shard).unwrap();
        assert_eq!(shard.xorbs.len(), plan.xorbs.len());
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
