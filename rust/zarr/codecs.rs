//! How a stored chunk becomes elements: the codec chains (from the zarrs crate) and the one
//! layout decision that is ours, whether the planner looks inside shards.
//!
//! When the first codec is `sharding_indexed`, the planner reads each shard's index and then
//! only the inner chunks a batch needs; an inner chunk is decoded by the shard's inner chain
//! (which may itself shard: nested shards decode whole). Otherwise the chunk file is read and
//! decoded whole by the array's chain.

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;

use zarrs::array::{
    ArrayToBytesCodecTraits, BytesRepresentation, CodecChain, CodecOptions, FillValue,
};
use zarrs_metadata::v3::MetadataV3;
use zarrs_metadata_ext::codec::sharding::{ShardingCodecConfiguration, ShardingIndexLocation};

use super::leaf::LeafCodecs;
use super::limits;
use crate::error::{Error, Result};

/// Where a shard keeps its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexLocation {
    Start,
    End,
}

/// How a `sharding_indexed` codec lays out a shard.
#[derive(Clone, Debug)]
pub struct Sharding {
    /// The shape of an inner chunk, in elements.
    pub inner_shape: Vec<u64>,
    /// The codecs of each inner chunk.
    pub inner: Arc<LeafCodecs>,
    /// The codecs of the index: `[*inner chunks per shard, 2]` uint64 offsets and lengths.
    pub index: Arc<CodecChain>,
    /// The encoded size of the index in bytes.
    pub index_len: u64,
    pub index_location: IndexLocation,
}

/// How the planner treats stored chunks.
#[derive(Clone, Debug)]
pub enum ChunkLayout {
    /// Each chunk file is read and decoded whole.
    Whole(Arc<LeafCodecs>),
    /// Shards whose inner chunks are read one by one through the shard index.
    Sharded(Sharding),
}

fn codec_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::unsupported_because(path, format!("{what}: {e}"))
}

impl ChunkLayout {
    /// Chooses the layout for `codecs`, the array's (v3, or converted from v2) codec list.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a codec zarrs does not provide here, or a shard index whose
    /// size is not fixed.
    pub fn from_metadata(
        path: &Path,
        codecs: &[MetadataV3],
        chunk_shape: &[u64],
        element_size: usize,
    ) -> Result<Self> {
        check_codecs(path, codecs, chunk_shape, element_size)?;
        let whole = || -> Result<Self> {
            let chain =
                CodecChain::from_metadata(codecs).map_err(|e| codec_error(path, "codecs", e))?;
            Ok(Self::Whole(Arc::new(LeafCodecs::new(
                chain,
                codecs,
                element_size,
            ))))
        };
        let Some(first) = codecs.first().filter(|c| c.name() == "sharding_indexed") else {
            return whole();
        };
        let config: ShardingCodecConfiguration = first
            .to_typed_configuration()
            .map_err(|e| Error::invalid_metadata(path, format!("sharding_indexed: {e}")))?;
        let ShardingCodecConfiguration::V1(config) = config else {
            return Err(Error::unsupported(path, "sharding_indexed configuration"));
        };
        // `check_codecs` made sure it divides the shard shape.
        let inner_shape: Vec<u64> = config.chunk_shape.iter().map(|n| n.get()).collect();
        if codecs.len() > 1 {
            // Codecs after sharding transform the whole shard: it can only be decoded whole.
            return whole();
        }
        let inner = CodecChain::from_metadata(&config.codecs)
            .map_err(|e| codec_error(path, "codec (in sharding_indexed)", e))?;
        let index = CodecChain::from_metadata(&config.index_codecs)
            .map_err(|e| codec_error(path, "shard index codec", e))?;
        let per_shard: Vec<u64> = chunk_shape
            .iter()
            .zip(&inner_shape)
            .map(|(s, i)| s / i)
            .collect();
        let index_len = match index.encoded_representation(
            &index_shape(&per_shard),
            &zarrs::array::data_type::uint64(),
            &index_fill(),
        ) {
            Ok(BytesRepresentation::FixedSize(n)) => n,
            Ok(other) => {
                return Err(Error::unsupported(
                    path,
                    format!("shard index codecs with {other}"),
                ))
            }
            Err(e) => return Err(codec_error(path, "shard index codecs", e)),
        };
        Ok(Self::Sharded(Sharding {
            inner_shape,
            inner: Arc::new(LeafCodecs::new(inner, &config.codecs, element_size)),
            index: Arc::new(index),
            index_len,
            index_location: match config.index_location {
                ShardingIndexLocation::Start => IndexLocation::Start,
                _ => IndexLocation::End,
            },
        }))
    }
}

/// Checks what zarrs takes on trust in a chain for chunks of `chunk_shape`, before anything is
/// built or decoded: that each `transpose` order is a permutation of the chunk's dimensions,
/// and that the index and inner chunks of every shard, nested ones too, have sizes that the
/// engine can hold ([`limits::chunk_bytes`]).
///
/// # Errors
/// [`Error::InvalidMetadata`] or [`Error::Unsupported`] naming the codec and the size.
fn check_codecs(
    path: &Path,
    codecs: &[MetadataV3],
    chunk_shape: &[u64],
    element_size: usize,
) -> Result<()> {
    // An array-to-array codec hands the next one chunks of its own shape.
    let mut chunk_shape = chunk_shape.to_vec();
    for codec in codecs {
        match codec.name() {
            "transpose" => {
                let order = codec
                    .configuration()
                    .and_then(|c| c.get("order"))
                    .and_then(serde_json::Value::as_array)
                    .map(|o| {
                        o.iter()
                            .map(serde_json::Value::as_u64)
                            .collect::<Option<Vec<_>>>()
                    });
                let ndim = chunk_shape.len();
                let mut sorted = order.clone().flatten().unwrap_or_default();
                sorted.sort_unstable();
                if !sorted.iter().copied().eq(0..ndim as u64) {
                    return Err(Error::invalid_metadata(
                        path,
                        format!(
                            "transpose order {} is not a permutation of the {ndim} dimensions",
                            codec
                                .configuration()
                                .and_then(|c| c.get("order"))
                                .map_or_else(|| "(missing)".to_string(), ToString::to_string)
                        ),
                    ));
                }
                let order = order.flatten().unwrap_or_default();
                chunk_shape = order.iter().map(|&d| chunk_shape[d as usize]).collect();
            }
            "sharding_indexed" => {
                let Ok(ShardingCodecConfiguration::V1(config)) = codec.to_typed_configuration()
                else {
                    // Reported by the caller, which parses it again.
                    continue;
                };
                let inner: Vec<u64> = config.chunk_shape.iter().map(|n| n.get()).collect();
                if inner.len() != chunk_shape.len()
                    || inner.iter().zip(&chunk_shape).any(|(i, s)| s % i != 0)
                {
                    return Err(Error::invalid_metadata(
                        path,
                        format!("inner chunk shape {inner:?} does not divide the shard shape {chunk_shape:?}"),
                    ));
                }
                let mut index: Vec<u64> =
                    chunk_shape.iter().zip(&inner).map(|(s, i)| s / i).collect();
                index.push(2);
                limits::chunk_bytes(path, "shard index", &index, 8)?;
                limits::chunk_bytes(path, "inner chunk", &inner, element_size)?;
                check_codecs(path, &config.codecs, &inner, element_size)?;
                check_codecs(path, &config.index_codecs, &index, 8)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The shape of a shard index: one (offset, length) pair per inner chunk.
fn index_shape(per_shard: &[u64]) -> Vec<NonZeroU64> {
    per_shard
        .iter()
        .chain(&[2])
        .map(|&n| NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
        .collect()
}

fn index_fill() -> FillValue {
    FillValue::new(u64::MAX.to_ne_bytes().to_vec())
}

/// Decodes a shard index into native-endian (offset, length) words.
///
/// # Errors
/// The codec's message when the index does not decode (a bad checksum, a short shard).
pub fn decode_index(
    sharding: &Sharding,
    encoded: &[u8],
    per_shard: &[u64],
) -> Result<Vec<u64>, String> {
    let words = sharding
        .index
        .decode(
            Cow::Borrowed(encoded),
            &index_shape(per_shard),
            &zarrs::array::data_type::uint64(),
            &index_fill(),
            &CodecOptions::default(),
        )
        .map_err(|e| e.to_string())?
        .into_fixed()
        .map_err(|e| e.to_string())?;
    Ok(words
        .chunks_exact(8)
        .map(|w| u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zarr::ZarrArray;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// The fixtures' shards: (4, 8, 6) of inner chunks (2, 4, 3), an index of 8 entries.
    const PER_SHARD: [u64; 3] = [2, 2, 2];

    #[test]
    fn sharding_is_read_from_the_codecs_with_its_index_size_and_place() {
        for (name, location) in [
            ("sharded_end_int16.zarr", IndexLocation::End),
            ("sharded_start_float32.zarr", IndexLocation::Start),
        ] {
            let array = ZarrArray::open(fixture(name)).unwrap();
            let sharding = array.sharding().expect("sharded");
            assert_eq!(sharding.inner_shape, vec![2, 4, 3]);
            assert_eq!(sharding.index_location, location);
            // 8 entries of two u64, and a CRC-32C.
            assert_eq!(sharding.index_len, 8 * 16 + 4);
        }
        let unsharded = ZarrArray::open(fixture("unsharded_uint8.zarr")).unwrap();
        assert!(unsharded.sharding().is_none());
    }

    #[test]
    fn a_shard_index_decodes_to_the_words_on_disk_and_a_bad_checksum_is_refused() {
        let array = ZarrArray::open(fixture("sharded_end_int16.zarr")).unwrap();
        let sharding = array.sharding().unwrap();
        let shard = std::fs::read(fixture("sharded_end_int16.zarr/c/0/0/0")).unwrap();
        let mut encoded = shard[shard.len() - 8 * 16 - 4..].to_vec();
        let words = decode_index(sharding, &encoded, &PER_SHARD).unwrap();
        let on_disk: Vec<u64> = encoded[..8 * 16]
            .chunks(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words, on_disk);
        // Inner chunk (0, 1, 0) was never written: its slot is empty.
        assert_eq!(&words[4..6], &[u64::MAX, u64::MAX]);
        encoded[3] ^= 1;
        let e = decode_index(sharding, &encoded, &PER_SHARD).unwrap_err();
        assert!(e.to_lowercase().contains("checksum"), "{e}");
    }
}
