//! numcodecs' `lz4` compressor (v2 `lz4`, v3 `numcodecs.lz4`): a 4-byte little-endian
//! uncompressed size, then one LZ4 block (not the LZ4 frame format). Decoded as numcodecs'
//! `LZ4_decompress_safe` call decodes it: the size must be positive and the block must decode
//! to exactly that many bytes. Blocks are decoded by `lz4_flex`.

use serde::Deserialize;
use zarrs_codec::CodecError;
use zarrs_metadata::Configuration;
use zarrs_plugin::PluginCreateError;

use super::compressor::Compressor;
use crate::zarr::limits::MAX_CHUNK_BYTES;

/// The configuration numcodecs writes (`get_config`, less the `id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lz4Configuration {
    /// An encoding speed/ratio trade-off; decoding does not need it.
    #[serde(default)]
    #[allow(dead_code)]
    acceleration: Option<i64>,
}

/// The `lz4` codec.
#[derive(Clone, Debug)]
pub struct Lz4Codec {
    /// As read: written back unchanged.
    configuration: Configuration,
}

super::compressor::impl_compressor!(Lz4Codec, v3: "numcodecs.lz4", v2: "lz4");

impl Lz4Codec {
    /// Creates the codec from its configuration.
    ///
    /// # Errors
    /// [`PluginCreateError`] for a field other than `acceleration`.
    pub fn new(configuration: Configuration) -> Result<Self, PluginCreateError> {
        let _: Lz4Configuration = configuration.to_typed()?;
        Ok(Self { configuration })
    }
}

/// Decodes one numcodecs LZ4 buffer, which must hold `expected` bytes when that is known.
///
/// # Errors
/// A message for a short buffer, a size that is not positive or not `expected`, or a block
/// that does not decode to exactly its size.
pub fn decompress(encoded: &[u8], expected: Option<u64>) -> Result<Vec<u8>, String> {
    let (header, block) = encoded
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("lz4: {} bytes, shorter than the size header", encoded.len()))?;
    // numcodecs reads the size into a C int.
    let size = i32::from_le_bytes(*header);
    if size <= 0 {
        return Err(format!("lz4: invalid uncompressed size {size}"));
    }
    let size = size.unsigned_abs();
    if let Some(expected) = expected.filter(|&e| e != u64::from(size)) {
        return Err(format!("lz4: holds {size} bytes, expected {expected}"));
    }
    if u64::from(size) > MAX_CHUNK_BYTES {
        return Err(format!("lz4: {size} bytes, more than a chunk can hold"));
    }
    let mut out = vec![0u8; size as usize];
    let n = lz4_flex::block::decompress_into(block, &mut out).map_err(|e| format!("lz4: {e}"))?;
    if n == out.len() {
        Ok(out)
    } else {
        Err(format!("lz4: decoded {n} bytes, expected {size}"))
    }
}

impl Compressor for Lz4Codec {
    fn compress(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        if i32::try_from(decoded.len()).is_err() {
            return Err(CodecError::Other(format!(
                "lz4: {} bytes, more than numcodecs' 32-bit size header holds",
                decoded.len()
            )));
        }
        Ok(lz4_flex::block::compress_prepend_size(decoded))
    }

    fn decompress(&self, encoded: &[u8], expected: Option<u64>) -> Result<Vec<u8>, String> {
        decompress(encoded, expected)
    }

    fn max_encoded_size(&self, decoded_size: u64) -> Option<u64> {
        let bound = usize::try_from(decoded_size)
            .map(lz4_flex::block::get_maximum_output_size)
            .unwrap_or(usize::MAX);
        Some(4 + bound as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_size_prefixed_blocks_exactly() {
        let raw: Vec<u8> = (0..5000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let encoded = lz4_flex::block::compress_prepend_size(&raw);
        assert_eq!(&encoded[..4], &20_000u32.to_le_bytes());
        assert_eq!(decompress(&encoded, Some(20_000)).unwrap(), raw);
        assert_eq!(decompress(&encoded, None).unwrap(), raw);

        let err = decompress(&encoded, Some(100)).unwrap_err();
        assert!(err.contains("expected 100"), "{err}");
        assert!(decompress(&encoded[..3], None).is_err());
        assert!(decompress(&encoded[..encoded.len() - 5], None).is_err());
        let mut negative = encoded.clone();
        negative[3] = 0x80;
        assert!(decompress(&negative, None).unwrap_err().contains("invalid"));
        // A header that claims more than the block holds.
        let mut long = encoded;
        long[..4].copy_from_slice(&20_001u32.to_le_bytes());
        assert!(decompress(&long, None).is_err());
    }
}
