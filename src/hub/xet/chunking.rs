//! Content-defined chunking (the Xet protocol specification, "Chunking"): a gear hash rolls
//! over the bytes and a chunk ends after a byte where its 16 top bits are all zero, so
//! boundaries follow content, not offsets — an edit moves only the chunks around it. A chunk is
//! at least [`MIN_CHUNK`] bytes (only a file's last chunk may be shorter) and at most
//! [`MAX_CHUNK`]. The bytes a chunk must hold anyway are skipped, except the 64 that fill the
//! hash's window, and the hash restarts from zero at every boundary — exactly `xet-core`'s
//! chunker, so our chunks (and so chunk, xorb and file hashes) equal every Xet client's.

/// The mean chunk size the mask aims at.
pub const TARGET_CHUNK: usize = 64 * 1024;
/// The smallest chunk (except a file's last).
pub const MIN_CHUNK: usize = TARGET_CHUNK / 8;
/// The largest chunk.
pub const MAX_CHUNK: usize = TARGET_CHUNK * 2;
/// Bytes that determine the gear hash (its 64-bit state shifts one bit per byte).
const HASH_WINDOW: usize = 64;
/// A boundary where the hash's top 16 bits are zero (`TARGET_CHUNK - 1` shifted all the way
/// left: the low bits of a gear hash depend on only a few bytes).
const MASK: u64 = ((TARGET_CHUNK - 1) as u64) << ((TARGET_CHUNK - 1) as u64).leading_zeros();

/// The end offset of each chunk of `data`, in order (the last is `data.len()`); none for empty
/// data.
pub fn boundaries(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::with_capacity(data.len() / TARGET_CHUNK + 1);
    let mut hasher = gearhash::Hasher::default();
    let mut start = 0;
    while start < data.len() {
        let rest = &data[start..];
        let limit = rest.len().min(MAX_CHUNK);
        let mut position = (MIN_CHUNK - HASH_WINDOW - 1).min(limit);
        let mut cut = None;
        while let Some(found) = hasher.next_match(&rest[position..limit], MASK) {
            position += found;
            // A match within the first window would come from the previous chunk's state.
            if position >= MIN_CHUNK {
                cut = Some(position);
                break;
            }
        }
        let length = cut.unwrap_or(limit);
        hasher.set_hash(0);
        start += length;
        ends.push(start);
    }
    ends
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (an LCG's top byte).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_respect_the_size_limits_and_cover_the_data() {
        let data = noise(5 << 20, 1);
        let ends = boundaries(&data);
        assert_eq!(*ends.last().unwrap(), data.len());
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let length = end - start;
            assert!(length <= MAX_CHUNK, "chunk {i}: {length}");
            assert!(
                length >= MIN_CHUNK || i == ends.len() - 1,
                "chunk {i}: {length}"
            );
            start = end;
        }
        // Random bytes: about one boundary per 64 KiB past the minimum.
        let mean = data.len() / ends.len();
        assert!((40_000..110_000).contains(&mean), "mean chunk {mean}");
        assert_eq!(MASK, 0xffff_0000_0000_0000);
    }

    #[test]
    fn an_edit_moves_only_the_chunks_around_it() {
        let data = noise(4 << 20, 2);
        let mut edited = data.clone();
        edited.splice(2_000_000..2_000_010, noise(37, 3));
        let before = boundaries(&data);
        let after = boundaries(&edited);
        let shift = 37isize - 10;
        let moved = |e: usize| {
            if e > 2_000_000 {
                (e as isize + shift) as usize
            } else {
                e
            }
        };
        let same = before
            .iter()
            .filter(|&&e| after.contains(&moved(e)))
            .count();
        assert!(
            same + 3 >= before.len(),
            "{same} of {} boundaries kept",
            before.len()
        );
    }

    #[test]
    fn constant_data_is_cut_into_equal_chunks() {
        // After its window the hash of a constant run is constant: every chunk is cut at the
        // same length (the minimum if that constant matches, else the maximum).
        let ends = boundaries(&vec![7u8; 40 * MIN_CHUNK + 5]);
        let lengths: Vec<usize> = ends.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            lengths[..lengths.len() - 1].iter().all(|&l| l == ends[0]),
            "{lengths:?}"
        );
        assert!(ends[0] == MIN_CHUNK || ends[0] == MAX_CHUNK, "{}", ends[0]);
        assert!(boundaries(&[]).is_empty());
        assert_eq!(boundaries(b"abc"), vec![3]);
    }
}
