//! numcodecs' `delta` filter (v2 `delta`, v3 `numcodecs.delta`), decoded as numcodecs decodes
//! it:
//!
//! ```python
//! enc = buf.view(astype)
//! dec = np.empty_like(enc, dtype=dtype)
//! np.cumsum(enc, out=dec)
//! ```
//!
//! numpy accumulates in `np.result_type(astype, dtype)` (integers wrapping), casting each
//! running sum to `dtype` as it stores it. Encoding is `np.diff` in `dtype`, cast to
//! `astype`, after the first element as it is.

use std::num::NonZeroU64;
use std::sync::Arc;

use serde::Deserialize;
use zarrs::array::{ArrayBytes, ArraySubset, DataType, FillValue};
use zarrs::storage::StorageError;
use zarrs_codec::{
    ArrayCodecTraits, ArrayPartialDecoderTraits, ArrayToArrayCodecTraits, Codec, CodecError,
    CodecMetadataOptions, CodecOptions, CodecPluginV2, CodecPluginV3, CodecTraits, CodecTraitsV2,
    CodecTraitsV3, PartialDecoderCapability, PartialEncoderCapability, RecommendedConcurrency,
};
use zarrs_metadata::v2::MetadataV2;
use zarrs_metadata::v3::MetadataV3;
use zarrs_metadata::Configuration;
use zarrs_plugin::{PluginCreateError, ZarrVersion};

use super::numpy::{NumpyType, Scalar};

const NAME: &str = "delta";

/// The configuration numcodecs writes (`get_config`, less the `id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaConfiguration {
    dtype: String,
    #[serde(default)]
    astype: Option<String>,
}

/// The `delta` codec.
#[derive(Clone, Debug)]
pub struct DeltaCodec {
    /// As read: written back unchanged.
    configuration: Configuration,
    dtype: NumpyType,
    astype: NumpyType,
}

zarrs_plugin::impl_extension_aliases!(DeltaCodec,
    v3: "numcodecs.delta", [],
    v2: "delta", []
);

inventory::submit! {
    CodecPluginV3::new::<DeltaCodec>()
}
inventory::submit! {
    CodecPluginV2::new::<DeltaCodec>()
}

impl CodecTraitsV3 for DeltaCodec {
    fn create(metadata: &MetadataV3) -> Result<Codec, PluginCreateError> {
        let configuration = metadata.configuration().cloned().unwrap_or_default();
        Ok(Codec::ArrayToArray(Arc::new(Self::new(configuration)?)))
    }
}

impl CodecTraitsV2 for DeltaCodec {
    fn create(metadata: &MetadataV2) -> Result<Codec, PluginCreateError> {
        let configuration = metadata.configuration().clone();
        Ok(Codec::ArrayToArray(Arc::new(Self::new(configuration)?)))
    }
}

impl DeltaCodec {
    /// Creates the codec from its configuration.
    ///
    /// # Errors
    /// [`PluginCreateError`] when a field is missing or unknown, or a dtype is not numeric or
    /// not in native byte order.
    pub fn new(configuration: Configuration) -> Result<Self, PluginCreateError> {
        let parsed: DeltaConfiguration = configuration.to_typed()?;
        let (dtype, astype) = super::dtypes(NAME, &parsed.dtype, parsed.astype.as_deref())?;
        Ok(Self {
            configuration,
            dtype,
            astype,
        })
    }

    /// Decodes `encoded`, elements of `astype`, to elements of `dtype`.
    ///
    /// # Errors
    /// When `encoded` is not a whole number of elements.
    pub fn decode_elements(&self, encoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let sum_type = NumpyType::promote(self.astype, self.dtype);
        let mut sum: Option<Scalar> = None;
        super::map_elements(NAME, encoded, self.astype, self.dtype, |x| {
            let next = match sum {
                None => sum_type.cast(x),
                Some(sum) => sum_type.add(sum, x),
            };
            sum = Some(next);
            next
        })
    }

    /// Encodes `decoded`, elements of `dtype`, to elements of `astype`.
    ///
    /// # Errors
    /// When `decoded` is not a whole number of elements.
    pub fn encode_elements(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut previous: Option<Scalar> = None;
        super::map_elements(NAME, decoded, self.dtype, self.astype, |x| {
            let difference = previous.map_or(x, |p| self.dtype.sub(x, p));
            previous = Some(x);
            difference
        })
    }
}

impl CodecTraits for DeltaCodec {
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
        // Each element is the sum of all before it: only whole chunks decode.
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

impl ArrayCodecTraits for DeltaCodec {
    fn recommended_concurrency(
        &self,
        _shape: &[NonZeroU64],
        _data_type: &DataType,
    ) -> Result<RecommendedConcurrency, CodecError> {
        Ok(RecommendedConcurrency::new_maximum(1))
    }
}

impl ArrayToArrayCodecTraits for DeltaCodec {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn ArrayToArrayCodecTraits> {
        self as Arc<dyn ArrayToArrayCodecTraits>
    }

    fn encoded_data_type(&self, decoded_data_type: &DataType) -> Result<DataType, CodecError> {
        super::check_dtype(NAME, self.dtype, decoded_data_type)?;
        Ok(self.astype.data_type())
    }

    fn encode<'a>(
        &self,
        bytes: ArrayBytes<'a>,
        _shape: &[NonZeroU64],
        data_type: &DataType,
        _fill_value: &FillValue,
        _options: &CodecOptions,
    ) -> Result<ArrayBytes<'a>, CodecError> {
        super::check_dtype(NAME, self.dtype, data_type)?;
        Ok(self.encode_elements(&bytes.into_fixed()?)?.into())
    }

    fn decode<'a>(
        &self,
        bytes: ArrayBytes<'a>,
        _shape: &[NonZeroU64],
        data_type: &DataType,
        _fill_value: &FillValue,
        _options: &CodecOptions,
    ) -> Result<ArrayBytes<'a>, CodecError> {
        super::check_dtype(NAME, self.dtype, data_type)?;
        Ok(self.decode_elements(&bytes.into_fixed()?)?.into())
    }

    fn partial_decoder(
        self: Arc<Self>,
        input_handle: Arc<dyn ArrayPartialDecoderTraits>,
        shape: &[NonZeroU64],
        data_type: &DataType,
        fill_value: &FillValue,
        _options: &CodecOptions,
    ) -> Result<Arc<dyn ArrayPartialDecoderTraits>, CodecError> {
        Ok(Arc::new(WholeChunkDecoder {
            input: input_handle,
            shape: shape.to_vec(),
            data_type: data_type.clone(),
            fill_value: fill_value.clone(),
            codec: self,
        }))
    }
}

/// Partial decoding of a delta-encoded chunk: the whole chunk is decoded, then the elements
/// asked for taken from it. (zarrs' default decodes just the encoded elements asked for,
/// which is right only for element-by-element codecs.)
struct WholeChunkDecoder {
    input: Arc<dyn ArrayPartialDecoderTraits>,
    shape: Vec<NonZeroU64>,
    data_type: DataType,
    fill_value: FillValue,
    codec: Arc<DeltaCodec>,
}

impl ArrayPartialDecoderTraits for WholeChunkDecoder {
    fn data_type(&self) -> &DataType {
        &self.data_type
    }

    fn exists(&self) -> Result<bool, StorageError> {
        self.input.exists()
    }

    fn size_held(&self) -> usize {
        self.input.size_held()
    }

    fn partial_decode(
        &self,
        indexer: &dyn zarrs::array::Indexer,
        options: &CodecOptions,
    ) -> Result<ArrayBytes<'_>, CodecError> {
        let shape: Vec<u64> = self.shape.iter().map(|n| n.get()).collect();
        let whole = ArraySubset::new_with_shape(shape.clone());
        let encoded = self.input.partial_decode(&whole, options)?;
        let decoded = self.codec.decode(
            encoded,
            &self.shape,
            &self.data_type,
            &self.fill_value,
            options,
        )?;
        Ok(decoded
            .extract_array_subset(indexer, &shape, &self.data_type)?
            .into_owned())
    }

    fn supports_partial_decode(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(dtype: &str, astype: &str) -> DeltaCodec {
        DeltaCodec::new(
            serde_json::from_value(serde_json::json!({"dtype": dtype, "astype": astype})).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn decodes_numcodecs_example() {
        // numcodecs' docstring: Delta(dtype='i2', astype='i1') of arange(100, 120, 2).
        let c = codec("<i2", "i1");
        let encoded: Vec<u8> = [100i8, 2, 2, 2, 2, 2, 2, 2, 2, 2]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let want: Vec<u8> = (100i16..120)
            .step_by(2)
            .flat_map(i16::to_ne_bytes)
            .collect();
        assert_eq!(c.decode_elements(&encoded).unwrap(), want);
        assert_eq!(c.encode_elements(&want).unwrap(), encoded);
    }

    /// The running sum is kept in `np.result_type(astype, dtype)`, not in `dtype`: int32 sums
    /// stored as float32 round each sum, never the sum carried on.
    #[test]
    fn sums_in_the_promoted_type() {
        let c = codec("<f4", "<i4");
        let encoded: Vec<u8> = [16_777_216i32, 1, 1, 1]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let want: Vec<u8> = [16_777_216f32, 16_777_216.0, 16_777_218.0, 16_777_220.0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(c.decode_elements(&encoded).unwrap(), want);
        // uint8 into int8: summed in int16, wrapped as stored.
        let c = codec("|i1", "|u1");
        assert_eq!(
            c.decode_elements(&[200, 200, 200]).unwrap(),
            [-56i8, -112, 88].map(i8::to_ne_bytes).concat()
        );
    }
}
