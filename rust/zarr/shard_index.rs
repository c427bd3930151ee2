//! The index of a shard: where each inner chunk's bytes lie in the shard file.

use super::codecs::{BytesCodec, CodecChain};
use super::dtype::DataType;

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
    /// The encoded size in bytes of an index of `chunks` entries.
    #[must_use]
    pub fn encoded_len(chunks: u64, codecs: &CodecChain) -> u64 {
        let checksums = codecs
            .bytes_codecs
            .iter()
            .filter(|c| **c == BytesCodec::Crc32c)
            .count();
        16 * chunks + 4 * checksums as u64
    }

    /// A shard file that does not exist: every slot is empty.
    #[must_use]
    pub fn empty(chunks: u64) -> Self {
        Self {
            entries: vec![[u64::MAX; 2]; chunks as usize],
        }
    }

    /// Decodes an index read from a shard of `shard_len` bytes.
    ///
    /// # Errors
    /// A message when the index does not decode or points outside the shard.
    pub fn decode(
        encoded: &[u8],
        chunks: u64,
        codecs: &CodecChain,
        shard_len: u64,
    ) -> Result<Self, String> {
        let mut raw = vec![0u8; 16 * chunks as usize];
        codecs.decode_into(encoded, &mut raw, DataType::UInt64)?;
        let entries: Vec<[u64; 2]> = raw
            .chunks_exact(16)
            .map(|e| {
                let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
                [word(&e[..8]), word(&e[8..])]
            })
            .collect();
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

    fn index_bytes(entries: &[[u64; 2]]) -> Vec<u8> {
        let mut out: Vec<u8> = entries
            .iter()
            .flatten()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn chain() -> CodecChain {
        CodecChain {
            swap_bytes: false,
            bytes_codecs: vec![BytesCodec::Crc32c],
        }
    }

    #[test]
    fn decodes_slots_and_empties() {
        let bytes = index_bytes(&[[0, 10], [u64::MAX, u64::MAX], [10, 5]]);
        assert_eq!(ShardIndex::encoded_len(3, &chain()), bytes.len() as u64);
        let index = ShardIndex::decode(&bytes, 3, &chain(), 100).unwrap();
        assert_eq!(index.slot(0), Slot::Bytes { offset: 0, len: 10 });
        assert_eq!(index.slot(1), Slot::Empty);
        assert_eq!(index.slot(2), Slot::Bytes { offset: 10, len: 5 });
    }

    #[test]
    fn entries_past_the_end_are_corrupt() {
        let bytes = index_bytes(&[[90, 20]]);
        let err = ShardIndex::decode(&bytes, 1, &chain(), 100).unwrap_err();
        assert!(err.contains("outside the shard"), "{err}");
    }
}
