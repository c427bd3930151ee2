//! The index of a shard: where each inner chunk's bytes lie in the shard file.

use super::codecs::{decode_index, Sharding};

/// Offset and length of each inner chunk in a shard, in C order of the inner chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    entries: Vec<[u64; 2]>,
}

/// Where one inner chunk's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Never written: reads as the fill value.
    Empty,
    Bytes {
        offset: u64,
        len: u64,
    },
}

impl ShardIndex {
    /// Checks decoded index words (offset, length per inner chunk) against a shard of
    /// `shard_len` bytes.
    ///
    /// # Errors
    /// A message when the index has the wrong size or points outside the shard.
    pub fn from_words(words: &[u64], chunks: u64, shard_len: u64) -> Result<Self, String> {
        if words.len() as u64 != 2 * chunks {
            return Err(format!(
                "{} index words, expected {}",
                words.len(),
                2 * chunks
            ));
        }
        let entries: Vec<[u64; 2]> = words.chunks_exact(2).map(|e| [e[0], e[1]]).collect();
        for (i, [offset, len]) in entries.iter().enumerate() {
            let empty = *offset == u64::MAX && *len == u64::MAX;
            if !empty && offset.checked_add(*len).is_none_or(|end| end > shard_len) {
                return Err(format!(
                    "index entry {i} (offset {offset}, length {len}) lies outside the shard of {shard_len} bytes"
                ));
            }
        }
        Ok(Self { entries })
    }

    /// Decodes a shard's encoded index (with `sharding`'s index codecs) for a shard of
    /// `per_shard` inner chunks (a shape) and `shard_len` bytes, and checks it.
    ///
    /// # Errors
    /// A message when the index does not decode (a bad checksum), has the wrong size or
    /// points outside the shard.
    pub fn decode(
        sharding: &Sharding,
        encoded: &[u8],
        per_shard: &[u64],
        shard_len: u64,
    ) -> Result<Self, String> {
        let words = decode_index(sharding, encoded, per_shard)?;
        Self::from_words(&words, per_shard.iter().product(), shard_len)
    }

    /// The slot of inner chunk `i` (C order within the shard).
    #[must_use]
    pub fn slot(&self, i: u64) -> Slot {
        match self.entries.get(i as usize) {
            Some([u64::MAX, u64::MAX]) | None => Slot::Empty,
            Some([offset, len]) => Slot::Bytes {
                offset: *offset,
                len: *len,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_slots_and_empties() {
        let words = [0, 10, u64::MAX, u64::MAX, 10, 5];
        let index = ShardIndex::from_words(&words, 3, 100).unwrap();
        assert_eq!(index.slot(0), Slot::Bytes { offset: 0, len: 10 });
        assert_eq!(index.slot(1), Slot::Empty);
        assert_eq!(index.slot(2), Slot::Bytes { offset: 10, len: 5 });
    }

    #[test]
    fn entries_past_the_end_are_corrupt() {
        let err = ShardIndex::from_words(&[90, 20], 1, 100).unwrap_err();
        assert!(err.contains("outside the shard"), "{err}");
        let err = ShardIndex::from_words(&[0, u64::MAX], 1, 100).unwrap_err();
        assert!(err.contains("outside the shard"), "{err}");
        assert!(ShardIndex::from_words(&[0, 1, 2], 2, 100).is_err());
    }
}
