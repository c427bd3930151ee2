//! numcodecs' `lz4` compressor (v2 `lz4`, v3 `numcodecs.lz4`): a 4-byte little-endian
//! uncompressed size, then one LZ4 block (not the LZ4 frame format). Decoded as numcodecs'
//! `LZ4_decompress_safe` call decodes it: the size must be positive and the block must decode
//! to exactly that many bytes. Blocks are decoded by `lz4_flex`.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use zarrs::array::{ArrayBytesRaw, BytesRepresentation};
use zarrs_codec::{
    BytesToBytesCodecTraits, Codec, CodecError, CodecMetadataOptions, CodecOptions, CodecPluginV2,
    CodecPluginV3, CodecTraits, CodecTraitsV2, CodecTraitsV3, PartialDecoderCapability,
    PartialEncoderCapability, RecommendedConcurrency,
};
use zarrs_metadata::v2::MetadataV2;
use zarrs_metadata::v3::MetadataV3;
use zarrs_metadata::Configuration;
use zarrs_plugin::{PluginCreateError, ZarrVersion};

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

zarrs_plugin::impl_extension_aliases!(Lz4Codec,
    v3: "numcodecs.lz4", [],
    v2: "lz4", []
);

inventory::submit! {
    CodecPluginV3::new::<Lz4Codec>()
}
inventory::submit! {
    CodecPluginV2::new::<Lz4Codec>()
}

impl CodecTraitsV3 for Lz4Codec {
    fn create(metadata: &MetadataV3) -> Result<Codec, PluginCreateError> {
        let configuration = metadata.configuration().cloned().unwrap_or_default();
        Ok(Codec::BytesToBytes(Arc::new(Self::new(configuration)?)))
    }
}

impl CodecTraitsV2 for Lz4Codec {
    fn create(metadata: &MetadataV2) -> Result<Codec, PluginCreateError> {
        let configuration = metadata.configuration().clone();
        Ok(Codec::BytesToBytes(Arc::new(Self::new(configuration)?)))
    }
}

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

impl CodecTraits for Lz4Codec {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn configuration(
        &self,
        _version: ZarrVersion,
        _options: &CodecMetadataOptions,
    ) -> Option<Configuration> {
        Some(self.configuration.clone())
    }

    fn partial_decoder_capability(&self) -> PartialDecoderCapability {
        PartialDecoderCapability {
            partial_read: false,
            partial_decode: false,
        }
    }

    fn partial_encoder_capability(&self) -> PartialEncoderCapability {
        PartialEncoderCapability {
            partial_encode: false,
        }
    }
}

impl BytesToBytesCodecTraits for Lz4Codec {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn BytesToBytesCodecTraits> {
        self as Arc<dyn BytesToBytesCodecTraits>
    }

    fn recommended_concurrency(
        &self,
        _decoded_representation: &BytesRepresentation,
    ) -> Result<RecommendedConcurrency, CodecError> {
        Ok(RecommendedConcurrency::new_maximum(1))
    }

    fn encoded_representation(
        &self,
        decoded_representation: &BytesRepresentation,
    ) -> BytesRepresentation {
        decoded_representation
            .size()
            .map_or(BytesRepresentation::UnboundedSize, |size| {
                let bound = usize::try_from(size)
                    .map(lz4_flex::block::get_maximum_output_size)
                    .unwrap_or(usize::MAX);
                BytesRepresentation::BoundedSize(4 + bound as u64)
            })
    }

    fn encode<'a>(
        &self,
        decoded_value: ArrayBytesRaw<'a>,
        _options: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        if i32::try_from(decoded_value.len()).is_err() {
            return Err(CodecError::Other(format!(
                "lz4: {} bytes, more than numcodecs' 32-bit size header holds",
                decoded_value.len()
            )));
        }
        Ok(Cow::Owned(lz4_flex::block::compress_prepend_size(
            &decoded_value,
        )))
    }

    fn decode<'a>(
        &self,
        encoded_value: ArrayBytesRaw<'a>,
        decoded_representation: &BytesRepresentation,
        _options: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        let expected = match decoded_representation {
            BytesRepresentation::FixedSize(n) => Some(*n),
            _ => None,
        };
        decompress(&encoded_value, expected)
            .map(Cow::Owned)
            .map_err(CodecError::Other)
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
