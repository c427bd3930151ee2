//! numcodecs' filters as zarrs array-to-array codecs. A filter ([`Filter`]) maps the elements
//! of a chunk, in order, from its `dtype` (the array's data type) to its `astype` and back;
//! `impl_filter!` registers it and implements zarrs' traits from that.

use std::num::NonZeroU64;
use std::sync::Arc;

use zarrs::array::{ArrayBytes, ArraySubset, DataType, FillValue};
use zarrs::storage::StorageError;
use zarrs_codec::{ArrayPartialDecoderTraits, ArrayToArrayCodecTraits, CodecError, CodecOptions};
use zarrs_plugin::PluginCreateError;

use super::numpy::{NumpyType, Scalar};

/// What a numcodecs filter does; `impl_filter!` makes it a zarrs codec.
pub trait Filter {
    /// The codec's name, which its messages begin with.
    const NAME: &'static str;

    /// The type of the decoded elements, which must be the array's data type.
    fn dtype(&self) -> NumpyType;

    /// The type of the encoded elements.
    fn astype(&self) -> NumpyType;

    /// Decodes `encoded`, elements of `astype`, to elements of `dtype`.
    ///
    /// # Errors
    /// When `encoded` is not a whole number of elements.
    fn decode_elements(&self, encoded: &[u8]) -> Result<Vec<u8>, CodecError>;

    /// Encodes `decoded`, elements of `dtype`, to elements of `astype`.
    ///
    /// # Errors
    /// When `decoded` is not a whole number of elements.
    fn encode_elements(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError>;
}

/// Registers `$codec`, a [`Filter`], with zarrs ([`register!`](super::register)) and
/// implements zarrs' array-to-array codec traits for it. `whole_chunks` after its names: each
/// element depends on others, and only whole chunks decode ([`whole_chunk_decoder`]).
macro_rules! impl_filter {
    // Element by element: zarrs' default partial decoder decodes just the elements asked.
    ($codec:ident, v3: $v3:literal, v2: $v2:literal) => {
        $crate::zarr::numcodecs::register!($codec, ArrayToArray,
            v3: $v3, v2: $v2, partial_decode: true
        );
        $crate::zarr::numcodecs::filter::impl_filter!(@traits $codec {});
    };
    // Each element depends on those before it: only whole chunks decode.
    ($codec:ident, v3: $v3:literal, v2: $v2:literal, whole_chunks) => {
        $crate::zarr::numcodecs::register!($codec, ArrayToArray,
            v3: $v3, v2: $v2, partial_decode: false
        );
        $crate::zarr::numcodecs::filter::impl_filter!(@traits $codec {
            fn partial_decoder(
                self: ::std::sync::Arc<Self>,
                input_handle: ::std::sync::Arc<dyn ::zarrs_codec::ArrayPartialDecoderTraits>,
                shape: &[::std::num::NonZeroU64],
                data_type: &::zarrs::array::DataType,
                fill_value: &::zarrs::array::FillValue,
                _options: &::zarrs_codec::CodecOptions,
            ) -> Result<
                ::std::sync::Arc<dyn ::zarrs_codec::ArrayPartialDecoderTraits>,
                ::zarrs_codec::CodecError,
            > {
                Ok($crate::zarr::numcodecs::filter::whole_chunk_decoder(
                    self,
                    input_handle,
                    shape,
                    data_type,
                    fill_value,
                ))
            }
        });
    };
    (@traits $codec:ident { $($partial_decoder:tt)* }) => {
        impl ::zarrs_codec::ArrayCodecTraits for $codec {
            fn recommended_concurrency(
                &self,
                _shape: &[::std::num::NonZeroU64],
                _data_type: &::zarrs::array::DataType,
            ) -> Result<::zarrs_codec::RecommendedConcurrency, ::zarrs_codec::CodecError> {
                Ok(::zarrs_codec::RecommendedConcurrency::new_maximum(1))
            }
        }

        impl ::zarrs_codec::ArrayToArrayCodecTraits for $codec {
            fn into_dyn(
                self: ::std::sync::Arc<Self>,
            ) -> ::std::sync::Arc<dyn ::zarrs_codec::ArrayToArrayCodecTraits> {
                self as ::std::sync::Arc<dyn ::zarrs_codec::ArrayToArrayCodecTraits>
            }

            fn encoded_data_type(
                &self,
                decoded_data_type: &::zarrs::array::DataType,
            ) -> Result<::zarrs::array::DataType, ::zarrs_codec::CodecError> {
                $crate::zarr::numcodecs::filter::encoded_data_type(self, decoded_data_type)
            }

            $crate::zarr::numcodecs::filter::impl_filter!(@code encode, encode_elements);
            $crate::zarr::numcodecs::filter::impl_filter!(@code decode, decode_elements);

            $($partial_decoder)*
        }
    };
    // `encode` and `decode`, by the filter's `encode_elements` and `decode_elements`.
    (@code $method:ident, $elements:ident) => {
        fn $method<'a>(
            &self,
            bytes: ::zarrs::array::ArrayBytes<'a>,
            _shape: &[::std::num::NonZeroU64],
            data_type: &::zarrs::array::DataType,
            _fill_value: &::zarrs::array::FillValue,
            _options: &::zarrs_codec::CodecOptions,
        ) -> Result<::zarrs::array::ArrayBytes<'a>, ::zarrs_codec::CodecError> {
            $crate::zarr::numcodecs::filter::code_chunk(
                self,
                bytes,
                data_type,
                <Self as $crate::zarr::numcodecs::filter::Filter>::$elements,
            )
        }
    };
}
pub(crate) use impl_filter;

/// The data type `filter` encodes an array of `decoded_data_type` to: its `astype`.
///
/// # Errors
/// When `decoded_data_type` is not the filter's `dtype`.
pub(super) fn encoded_data_type(
    filter: &impl Filter,
    decoded_data_type: &DataType,
) -> Result<DataType, CodecError> {
    check_dtype(filter, decoded_data_type)?;
    Ok(filter.astype().data_type())
}

/// Encodes or decodes `bytes`, a chunk of `data_type`, by `elements` (`filter`'s
/// `encode_elements` or `decode_elements`).
///
/// # Errors
/// When `data_type` is not the filter's `dtype`, or `elements` fails.
pub(super) fn code_chunk<'a, F: Filter>(
    filter: &F,
    bytes: ArrayBytes<'a>,
    data_type: &DataType,
    elements: fn(&F, &[u8]) -> Result<Vec<u8>, CodecError>,
) -> Result<ArrayBytes<'a>, CodecError> {
    check_dtype(filter, data_type)?;
    Ok(elements(filter, &bytes.into_fixed()?)?.into())
}

/// The numpy type of the chunk a filter is handed, which must be its configured `dtype`.
fn check_dtype<F: Filter>(filter: &F, data_type: &DataType) -> Result<(), CodecError> {
    let dtype = filter.dtype();
    if NumpyType::of(data_type) == Some(dtype) {
        Ok(())
    } else {
        Err(CodecError::Other(format!(
            "{}: its dtype {} is not the array's data type {data_type}",
            F::NAME,
            dtype.name()
        )))
    }
}

/// Maps each element of `input`, of type `from`, through `f` and stores the result as `to`.
pub(super) fn map_elements(
    codec: &str,
    input: &[u8],
    from: NumpyType,
    to: NumpyType,
    mut f: impl FnMut(Scalar) -> Scalar,
) -> Result<Vec<u8>, CodecError> {
    if input.len() % from.size() != 0 {
        return Err(CodecError::Other(format!(
            "{codec}: {} bytes are not a whole number of {} elements",
            input.len(),
            from.name()
        )));
    }
    let mut out = vec![0u8; input.len() / from.size() * to.size()];
    for (element, slot) in input
        .chunks_exact(from.size())
        .zip(out.chunks_exact_mut(to.size()))
    {
        to.store(f(from.load(element)), slot);
    }
    Ok(out)
}

/// The dtype (and `astype`, defaulting to it) of a filter's configuration.
pub(super) fn dtypes(
    codec: &str,
    dtype: &str,
    astype: Option<&str>,
) -> Result<(NumpyType, NumpyType), PluginCreateError> {
    let parse = |text: &str| {
        NumpyType::parse(text).map_err(|e| PluginCreateError::Other(format!("{codec}: {e}")))
    };
    let dtype = parse(dtype)?;
    let astype = astype.map_or(Ok(dtype), parse)?;
    Ok((dtype, astype))
}

/// The partial decoder of a filter whose elements depend on others (delta's running sums).
pub(super) fn whole_chunk_decoder(
    codec: Arc<dyn ArrayToArrayCodecTraits>,
    input: Arc<dyn ArrayPartialDecoderTraits>,
    shape: &[NonZeroU64],
    data_type: &DataType,
    fill_value: &FillValue,
) -> Arc<dyn ArrayPartialDecoderTraits> {
    Arc::new(WholeChunkDecoder {
        input,
        shape: shape.to_vec(),
        data_type: data_type.clone(),
        fill_value: fill_value.clone(),
        codec,
    })
}

/// Partial decoding of a chunk whose elements depend on others: the whole chunk is decoded,
/// then the elements asked for taken from it. (zarrs' default decodes just the encoded
/// elements asked for, which is right only for element-by-element codecs.)
struct WholeChunkDecoder {
    input: Arc<dyn ArrayPartialDecoderTraits>,
    shape: Vec<NonZeroU64>,
    data_type: DataType,
    fill_value: FillValue,
    codec: Arc<dyn ArrayToArrayCodecTraits>,
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

    #[test]
    fn elements_are_mapped_in_order_from_one_type_to_another() {
        let input: Vec<u8> = [1i16, -2, 300]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let doubled = |s: Scalar| match s {
            Scalar::Int(i) => Scalar::Int(2 * i),
            Scalar::Float(f) => Scalar::Float(2.0 * f),
        };
        let out = map_elements("test", &input, NumpyType::Int16, NumpyType::Int8, doubled).unwrap();
        // 600 wraps in int8 as numpy's astype does: 600 - 512 = 88.
        assert_eq!(out, [2i8, -4, 88].map(|v| v.to_ne_bytes()[0]).to_vec());
        let e = map_elements(
            "delta",
            &input[..5],
            NumpyType::Int16,
            NumpyType::Int8,
            doubled,
        );
        let message = format!("{}", e.unwrap_err());
        assert!(
            message.contains("delta: 5 bytes are not a whole number of int16"),
            "{message}"
        );
    }

    #[test]
    fn astype_defaults_to_dtype_and_a_bad_type_names_the_codec() {
        assert_eq!(
            dtypes("delta", "<i4", None).unwrap(),
            (NumpyType::Int32, NumpyType::Int32)
        );
        assert_eq!(
            dtypes("delta", "<f8", Some("<f4")).unwrap(),
            (NumpyType::Float64, NumpyType::Float32)
        );
        let e = dtypes("fixedscaleoffset", "<q9", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fixedscaleoffset:"), "{e}");
    }
}
