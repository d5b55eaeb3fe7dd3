//! Xet hashes (the Xet protocol specification, "Hashing" and "API: converting hashes to
//! strings"): keyed BLAKE3 chunk hashes, the aggregated Merkle hash of xorbs and files, and the
//! verification hash of a shard's terms.

/// Key of the keyed BLAKE3 hash of a chunk's bytes (the specification's `DATA_KEY`).
const DATA_KEY: [u8; 32] = [
    102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28, 157, 228, 33, 16,
    155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41,
];

/// Key of the keyed BLAKE3 hash of an inner node of the Merkle tree (`INTERNAL_NODE_KEY`).
const INTERNAL_NODE_KEY: [u8; 32] = [
    1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230, 93, 221, 83, 111, 55,
    199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63,
];

/// Key of the hash a shard carries for each term (`VERIFICATION_KEY`).
const VERIFICATION_KEY: [u8; 32] = [
    127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243, 164, 205, 38, 213,
    181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195,
];

/// Mean branching factor of the aggregated tree: a node closes after a child whose hash is
/// `0 mod 4`, with at least 2 and at most 9 children.
const BRANCHING: u64 = 4;
const MAX_CHILDREN: usize = 2 * BRANCHING as usize + 1;

/// A 32-byte Xet hash in its raw byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct XetHash(pub [u8; 32]);

impl XetHash {
    /// The hash's string form: each 8-byte word read as a little-endian `u64`, printed as 16
    /// hex digits (so not the bytes in order; the specification insists on this).
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for word in self.0.chunks_exact(8) {
            let value = u64::from_le_bytes(word.try_into().expect("8-byte word"));
            out.push_str(&format!("{value:016x}"));
        }
        out
    }

    /// Parses the string form ([`XetHash::hex`]); `None` unless 64 lowercase hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, word) in out.chunks_exact_mut(8).enumerate() {
            let value = u64::from_str_radix(&text[i * 16..(i + 1) * 16], 16).ok()?;
            word.copy_from_slice(&value.to_le_bytes());
        }
        Some(Self(out))
    }

    /// The last word as a little-endian `u64`, modulo `m` (how the tree and global dedup pick).
    pub fn modulo(&self, m: u64) -> u64 {
        u64::from_le_bytes(self.0[24..32].try_into().expect("8-byte word")) % m
    }

    /// Whether the hash is the all-ones marker that ends a shard section.
    pub fn is_bookend(&self) -> bool {
        self.0 == [0xff; 32]
    }
}

impl std::fmt::Debug for XetHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The hash of one chunk's (uncompressed) bytes.
pub fn chunk_hash(data: &[u8]) -> XetHash {
    XetHash(*blake3::keyed_hash(&DATA_KEY, data).as_bytes())
}

/// The hash of a xorb: the root of the aggregated tree over its chunks (hash, length).
pub fn xorb_hash(chunks: &[(XetHash, u64)]) -> XetHash {
    aggregated(chunks)
}

/// The hash of a file: the root of the aggregated tree over all its chunks, hashed once more
/// with an all-zero key. An empty file has the all-zero hash.
pub fn file_hash(chunks: &[(XetHash, u64)]) -> XetHash {
    if chunks.is_empty() {
        return XetHash::default();
    }
    XetHash(*blake3::keyed_hash(&[0; 32], &aggregated(chunks).0).as_bytes())
}

/// The verification hash of a term: keyed BLAKE3 of its chunks' raw hashes, in order.
pub fn verification_hash(chunk_hashes: impl Iterator<Item = XetHash>) -> XetHash {
    let mut hasher = blake3::Hasher::new_keyed(&VERIFICATION_KEY);
    for hash in chunk_hashes {
        hasher.update(&hash.0);
    }
    XetHash(*hasher.finalize().as_bytes())
}

/// Collapses the list level by level into groups cut by [`next_cut`], each group replaced by
/// the keyed hash of its `"{hash} : {length}\n"` lines and its total length.
fn aggregated(chunks: &[(XetHash, u64)]) -> XetHash {
    if chunks.is_empty() {
        return XetHash::default();
    }
    let mut level = chunks.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len() / 2 + 1);
        let mut start = 0;
        while start < level.len() {
            let end = start + next_cut(&level[start..]);
            next.push(merge(&level[start..end]));
            start = end;
        }
        level = next;
    }
    level[0].0
}

/// How many nodes the next group takes: up to and including the first node from the third
/// on whose hash is `0 mod 4`, at most [`MAX_CHILDREN`], all when two or fewer remain.
fn next_cut(nodes: &[(XetHash, u64)]) -> usize {
    if nodes.len() <= 2 {
        return nodes.len();
    }
    let end = MAX_CHILDREN.min(nodes.len());
    (2..end)
        .find(|&i| nodes[i].0.modulo(BRANCHING) == 0)
        .map_or(end, |i| i + 1)
}

fn merge(nodes: &[(XetHash, u64)]) -> (XetHash, u64) {
    let mut text = String::with_capacity(nodes.len() * 88);
    let mut total = 0u64;
    for (hash, length) in nodes {
        text.push_str(&hash.hex());
        text.push_str(" : ");
        text.push_str(&length.to_string());
        text.push('\n');
        total += length;
    }
    let hash = XetHash(*blake3::keyed_hash(&INTERNAL_NODE_KEY, text.as_bytes()).as_bytes());
    (hash, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_form_reverses_each_word_as_the_specification_shows() {
        let hash = XetHash(std::array::from_fn(|i| i as u8));
        // The specification's example for bytes 0..32 (its text drops the `10` of the third
        // word, leaving 62 digits).
        let text = "07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918";
        assert_eq!(hash.hex(), text);
        assert_eq!(XetHash::from_hex(text), Some(hash));
        assert_eq!(XetHash::from_hex(&text.to_uppercase()), None);
        assert_eq!(XetHash::from_hex(&text[1..]), None);
    }

    #[test]
    fn one_chunk_xorb_hash_is_one_merge_of_that_chunk() {
        let chunk = chunk_hash(b"hello");
        let expected = merge(&[(chunk, 5)]).0;
        // A single node is the root as it is: no merge happens.
        assert_eq!(xorb_hash(&[(chunk, 5)]), chunk);
        assert_eq!(
            xorb_hash(&[(chunk, 5), (chunk, 5)]),
            merge(&[(chunk, 5), (chunk, 5)]).0
        );
        assert_ne!(expected, chunk);
    }

    #[test]
    fn groups_hold_two_to_nine_nodes() {
        let nodes: Vec<(XetHash, u64)> = (0..40u8).map(|i| (chunk_hash(&[i]), 1)).collect();
        let mut start = 0;
        while start < nodes.len() {
            let cut = next_cut(&nodes[start..]);
            assert!((2..=MAX_CHILDREN).contains(&cut) || start + cut == nodes.len());
            start += cut;
        }
    }
}
