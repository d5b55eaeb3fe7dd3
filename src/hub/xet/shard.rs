//! Shards as clients upload them (the Xet protocol specification, "Shard format"): a 48-byte
//! header, the file info section (per file: a header, its terms, optionally a verification
//! entry per term and the metadata extension with the sha256), the CAS info section (the new
//! xorbs and their chunks), each ended by a bookend, and optionally the 200-byte footer.
//! Parsing checks the layout only; the server's CAS checks what the entries claim. Our client's
//! uploads are written by [`upload_body`], the dedup query's answers by [`dedup_answer`].

use super::hash::XetHash;

/// The shard header's magic tag.
const HEADER_TAG: [u8; 32] = [
    b'H', b'F', b'R', b'e', b'p', b'o', b'M', b'e', b't', b'a', b'D', b'a', b't', b'a', 0, 85, 105,
    103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169,
];
const HEADER_VERSION: u64 = 2;
const FOOTER_BYTES: u64 = 200;
const ENTRY: usize = 48;
/// File flag: one verification entry follows per term.
const WITH_VERIFICATION: u32 = 1 << 31;
/// File flag: the metadata extension (sha256) follows.
const WITH_METADATA: u32 = 1 << 30;
/// Chunk flag: the CAS indexes the chunk for the global dedup query (a file's first chunk, or
/// one the client chose: ours flag each xorb's first).
const GLOBAL_DEDUP: u32 = 1 << 31;
/// How many flagged chunks of one xorb entry a parsed shard keeps for the index: one, plus one
/// per 64 chunks (a hostile shard cannot make the CAS write an index entry per chunk).
fn indexed_cap(chunks: usize) -> usize {
    1 + chunks / 64
}

/// One term of a file: chunks `[start, end)` of a xorb, `bytes` long uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Term {
    /// The xorb.
    #[serde(with = "hex_hash")]
    pub xorb: XetHash,
    /// First chunk.
    pub start: u32,
    /// One past the last chunk.
    pub end: u32,
    /// Uncompressed bytes of the range.
    pub bytes: u32,
}

/// One file of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's Xet hash.
    pub file_hash: XetHash,
    /// Its terms, in order.
    pub terms: Vec<Term>,
    /// The verification hash of each term, when the shard has them.
    pub verification: Option<Vec<XetHash>>,
    /// The sha256 of the content (the metadata extension), when present, in the byte order of
    /// a Xet hash (`XetHash(sha256).hex()` is the usual hex digest).
    pub sha256: Option<[u8; 32]>,
}

/// One xorb of the CAS info section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XorbInfo {
    /// The xorb.
    pub xorb: XetHash,
    /// Its chunks: hash and uncompressed length.
    pub chunks: Vec<(XetHash, u32)>,
}

/// A parsed shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    /// The files it records.
    pub files: Vec<FileInfo>,
    /// The xorbs it lists.
    pub xorbs: Vec<XorbInfo>,
    /// Chunks flagged for the global dedup index, with the xorb that holds them (at most
    /// `1 + chunks / 64` per xorb entry; later flags are ignored).
    pub indexed: Vec<(XetHash, XetHash)>,
}

/// Why a shard is malformed (a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed shard at byte {offset}: {reason}")]
pub struct ShardError {
    /// Where parsing stopped.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a shard body. Every count is checked against the bytes left before anything is
/// allocated for it, so memory stays proportional to the body.
pub fn parse(bytes: &[u8]) -> Result<Shard, ShardError> {
    let mut reader = Reader { bytes, offset: 0 };
    if reader.take(32, "no header")? != HEADER_TAG {
        return Err(reader.error("not a shard (wrong magic tag)"));
    }
    if reader.u64("no header")? != HEADER_VERSION {
        return Err(reader.error("unsupported shard version"));
    }
    let footer = reader.u64("no header")?;
    if footer != 0 && footer != FOOTER_BYTES {
        return Err(reader.error("unexpected footer size"));
    }
    let mut shard = Shard::default();
    loop {
        let hash = reader.hash("file info section is not closed")?;
        let flags = reader.u32("cut in a file header")?;
        let count = reader.u32("cut in a file header")? as usize;
        reader.take(8, "cut in a file header")?;
        if hash.is_bookend() {
            break;
        }
        if count == 0 {
            return Err(reader.error("a file has no terms"));
        }
        reader.room_for(count, "a file lists more terms than the shard holds")?;
        let mut terms = Vec::with_capacity(count);
        for _ in 0..count {
            let xorb = reader.hash("cut in a term")?;
            reader.u32("cut in a term")?;
            let bytes = reader.u32("cut in a term")?;
            let start = reader.u32("cut in a term")?;
            let end = reader.u32("cut in a term")?;
            terms.push(Term {
                xorb,
                start,
                end,
                bytes,
            });
        }
        let verification = if flags & WITH_VERIFICATION != 0 {
            reader.room_for(count, "verification entries are cut short")?;
            let mut hashes = Vec::with_capacity(count);
            for _ in 0..count {
                hashes.push(reader.hash("cut in a verification entry")?);
                reader.take(16, "cut in a verification entry")?;
            }
            Some(hashes)
        } else {
            None
        };
        let sha256 = if flags & WITH_METADATA != 0 {
            let sha256 = reader.hash("cut in a metadata extension")?.0;
            reader.take(16, "cut in a metadata extension")?;
            Some(sha256)
        } else {
            None
        };
        shard.files.push(FileInfo {
            file_hash: hash,
            terms,
            verification,
            sha256,
        });
    }
    loop {
        let xorb = reader.hash("CAS info section is not closed")?;
        reader.u32("cut in a CAS header")?;
        let count = reader.u32("cut in a CAS header")? as usize;
        reader.take(8, "cut in a CAS header")?;
        if xorb.is_bookend() {
            break;
        }
        reader.room_for(count, "a xorb lists more chunks than the shard holds")?;
        let mut chunks = Vec::with_capacity(count);
        let mut flagged = 0;
        for _ in 0..count {
            let hash = reader.hash("cut in a CAS entry")?;
            reader.u32("cut in a CAS entry")?;
            let unpacked = reader.u32("cut in a CAS entry")?;
            let flags = reader.u32("cut in a CAS entry")?;
            reader.take(4, "cut in a CAS entry")?;
            if flags & GLOBAL_DEDUP != 0 && flagged < indexed_cap(count) {
                flagged += 1;
                shard.indexed.push((hash, xorb));
            }
            chunks.push((hash, unpacked));
        }
        shard.xorbs.push(XorbInfo { xorb, chunks });
    }
    // With a footer, lookup tables come between the sections and it; nothing reads them here.
    if footer == 0 && reader.offset != bytes.len() {
        return Err(reader.error("unexpected bytes after the CAS info section"));
    }
    Ok(shard)
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &'static str) -> ShardError {
        ShardError {
            offset: self.offset,
            reason,
        }
    }

    fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], ShardError> {
        let slice = self
            .bytes
            .get(self.offset..self.offset + n)
            .ok_or(self.error(reason))?;
        self.offset += n;
        Ok(slice)
    }

    fn room_for(&self, entries: usize, reason: &'static str) -> Result<(), ShardError> {
        if entries.saturating_mul(ENTRY) > self.bytes.len() - self.offset {
            return Err(self.error(reason));
        }
        Ok(())
    }

    fn hash(&mut self, reason: &'static str) -> Result<XetHash, ShardError> {
        Ok(XetHash(
            self.take(32, reason)?.try_into().expect("32 bytes"),
        ))
    }

    fn u32(&mut self, reason: &'static str) -> Result<u32, ShardError> {
        Ok(u32::from_le_bytes(
            self.take(4, reason)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, reason: &'static str) -> Result<u64, ShardError> {
        Ok(u64::from_le_bytes(
            self.take(8, reason)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Serde of a [`XetHash`] as its string form.
mod hex_hash {
    use super::XetHash;

    pub fn serialize<S: serde::Serializer>(hash: &XetHash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hash.hex())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<XetHash, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        XetHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("not a xet hash"))
    }
}

/// A xorb an upload created, as its shard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewXorb {
    /// The xorb and its chunks.
    pub info: XorbInfo,
    /// Its serialized size.
    pub stored_bytes: u32,
    /// The chunks (indices, ascending) flagged for the global dedup index: a file's first, a
    /// xorb's first.
    pub indexed: Vec<u32>,
}

/// Serializes the shard of an upload as the specification requires it: the header (no footer),
/// the files (each with a verification hash per term and its sha256), the xorbs the upload
/// created, each section closed by a bookend.
pub fn upload_body(files: &[FileInfo], xorbs: &[NewXorb]) -> Vec<u8> {
    let terms: usize = files.iter().map(|f| 2 * f.terms.len() + 2).sum();
    let chunks: usize = xorbs.iter().map(|x| x.info.chunks.len() + 1).sum();
    let mut out = Vec::with_capacity(48 * (terms + chunks + 3));
    out.extend_from_slice(&HEADER_TAG);
    out.extend_from_slice(&HEADER_VERSION.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    let words = |out: &mut Vec<u8>, values: &[u32]| {
        for value in values {
            out.extend_from_slice(&value.to_le_bytes());
        }
    };
    for file in files {
        let mut flags = 0;
        if file.verification.is_some() {
            flags |= WITH_VERIFICATION;
        }
        if file.sha256.is_some() {
            flags |= WITH_METADATA;
        }
        out.extend_from_slice(&file.file_hash.0);
        words(&mut out, &[flags, file.terms.len() as u32, 0, 0]);
        for term in &file.terms {
            out.extend_from_slice(&term.xorb.0);
            words(&mut out, &[0, term.bytes, term.start, term.end]);
        }
        for hash in file.verification.iter().flatten() {
            out.extend_from_slice(&hash.0);
            out.extend_from_slice(&[0; 16]);
        }
        if let Some(sha256) = &file.sha256 {
            out.extend_from_slice(sha256);
            out.extend_from_slice(&[0; 16]);
        }
    }
    bookend(&mut out);
    for xorb in xorbs {
        let total: u32 = xorb.info.chunks.iter().map(|c| c.1).sum();
        out.extend_from_slice(&xorb.info.xorb.0);
        words(
            &mut out,
            &[0, xorb.info.chunks.len() as u32, total, xorb.stored_bytes],
        );
        let mut position = 0u32;
        for (i, (hash, unpacked)) in xorb.info.chunks.iter().enumerate() {
            let flags = if xorb.indexed.binary_search(&(i as u32)).is_ok() {
                GLOBAL_DEDUP
            } else {
                0
            };
            out.extend_from_slice(&hash.0);
            words(&mut out, &[position, *unpacked, flags, 0]);
            position += unpacked;
        }
    }
    bookend(&mut out);
    out
}

/// Serializes a shard answering a global dedup query as `xet-core` reads it: no files, the
/// given xorbs, the lookup tables (file: none; xorb: first word of its hash → its entry index;
/// chunk: first word of its hash → xorb entry index and chunk index, sorted), and the 200-byte
/// footer with their offsets, no chunk HMAC key, and `expiry` (unix seconds).
pub fn dedup_answer(xorbs: &[XorbInfo], now: u64, expiry: u64) -> Vec<u8> {
    let word = |hash: &XetHash| u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes"));
    let mut out = Vec::new();
    out.extend_from_slice(&HEADER_TAG);
    out.extend_from_slice(&HEADER_VERSION.to_le_bytes());
    out.extend_from_slice(&FOOTER_BYTES.to_le_bytes());
    let file_info_offset = out.len() as u64;
    bookend(&mut out);
    let xorb_info_offset = out.len() as u64;
    let mut xorb_lookup = Vec::new();
    let mut chunk_lookup = Vec::new();
    let mut entry = 0u32;
    let mut stored = 0u64;
    for xorb in xorbs {
        let total: u64 = xorb.chunks.iter().map(|c| u64::from(c.1)).sum();
        stored += total;
        xorb_lookup.push((word(&xorb.xorb), entry));
        out.extend_from_slice(&xorb.xorb.0);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(xorb.chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut position = 0u32;
        for (i, (hash, unpacked)) in xorb.chunks.iter().enumerate() {
            chunk_lookup.push((word(hash), entry, i as u32));
            out.extend_from_slice(&hash.0);
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&unpacked.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            position += unpacked;
        }
        entry += 1 + xorb.chunks.len() as u32;
    }
    bookend(&mut out);
    let file_lookup_offset = out.len() as u64;
    xorb_lookup.sort_unstable();
    let xorb_lookup_offset = out.len() as u64;
    for (key, index) in &xorb_lookup {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
    }
    chunk_lookup.sort_unstable();
    let chunk_lookup_offset = out.len() as u64;
    for (key, xorb_entry, chunk) in &chunk_lookup {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&xorb_entry.to_le_bytes());
        out.extend_from_slice(&chunk.to_le_bytes());
    }
    let footer_offset = out.len() as u64;
    for value in [
        1,
        file_info_offset,
        xorb_info_offset,
        file_lookup_offset,
        0,
        xorb_lookup_offset,
        xorb_lookup.len() as u64,
        chunk_lookup_offset,
        chunk_lookup.len() as u64,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&[0; 32]);
    for value in [
        now,
        expiry,
        0,
        0,
        0,
        0,
        0,
        0,
        stored,
        stored,
        stored,
        footer_offset,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

fn bookend(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xff; 32]);
    out.extend_from_slice(&[0; 16]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dedup_answer_parses_back() {
        let xorb = XorbInfo {
            xorb: XetHash([7; 32]),
            chunks: vec![(XetHash([1; 32]), 10), (XetHash([2; 32]), 20)],
        };
        let bytes = dedup_answer(std::slice::from_ref(&xorb), 5, 6);
        let shard = parse(&bytes).unwrap();
        assert!(shard.files.is_empty());
        assert_eq!(shard.xorbs, vec![xorb]);
    }

    #[test]
    fn an_upload_body_parses_back() {
        let info = XorbInfo {
            xorb: XetHash([7; 32]),
            chunks: vec![(XetHash([1; 32]), 10), (XetHash([2; 32]), 20)],
        };
        let file = FileInfo {
            file_hash: XetHash([3; 32]),
            terms: vec![Term {
                xorb: info.xorb,
                start: 0,
                end: 2,
                bytes: 30,
            }],
            verification: Some(vec![XetHash([4; 32])]),
            sha256: Some([5; 32]),
        };
        let xorb = NewXorb {
            info: info.clone(),
            stored_bytes: 46,
            indexed: vec![0],
        };
        let bytes = upload_body(std::slice::from_ref(&file), &[xorb]);
        let shard = parse(&bytes).unwrap();
        assert_eq!(shard.files, vec![file]);
        assert_eq!(shard.xorbs, vec![info]);
        assert_eq!(shard.indexed, vec![(XetHash([1; 32]), XetHash([7; 32]))]);
    }

    #[test]
    fn a_shard_flagging_every_chunk_gets_few_indexed() {
        let info = XorbInfo {
            xorb: XetHash([7; 32]),
            chunks: (0..200u8).map(|i| (XetHash([i; 32]), 10)).collect(),
        };
        let xorb = NewXorb {
            info: info.clone(),
            stored_bytes: 0,
            indexed: (0..200).collect(),
        };
        let shard = parse(&upload_body(&[], &[xorb])).unwrap();
        assert!(shard.files.is_empty());
        assert_eq!(shard.xorbs, vec![info]);
        // One, plus one per 64 chunks: the first four.
        let indexed: Vec<u8> = shard.indexed.iter().map(|(c, _)| c.0[0]).collect();
        assert_eq!(indexed, vec![0, 1, 2, 3]);
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let mut bytes = dedup_answer(&[], 0, 0);
        // A file header claiming 2^32-1 terms in place of the first bookend.
        bytes[48..80].copy_from_slice(&[3; 32]);
        bytes[84..88].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&bytes).is_err());
        assert!(parse(&bytes[..40]).is_err());
    }
}
