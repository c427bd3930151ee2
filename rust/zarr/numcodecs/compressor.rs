//! numcodecs' compressors as zarrs bytes-to-bytes codecs. A compressor ([`Compressor`])
//! encodes a chunk's bytes and decodes them back; `impl_compressor!` registers it and
//! implements zarrs' traits from that.

use std::borrow::Cow;

use zarrs::array::{ArrayBytesRaw, BytesRepresentation};
use zarrs_codec::CodecError;

/// What a numcodecs compressor does; `impl_compressor!` makes it a zarrs codec.
pub trait Compressor {
    /// Encodes `decoded`, a chunk's bytes.
    ///
    /// # Errors
    /// When the chunk cannot be encoded as numcodecs would encode it.
    fn compress(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError>;

    /// Decodes `encoded`, which must hold `expected` bytes when that is known.
    ///
    /// # Errors
    /// A message that says why `encoded` does not decode.
    fn decompress(&self, encoded: &[u8], expected: Option<u64>) -> Result<Vec<u8>, String>;

    /// The most bytes the encoding of `decoded_size` bytes takes, when that is known.
    fn max_encoded_size(&self, _decoded_size: u64) -> Option<u64> {
        None
    }
}

/// Registers `$codec`, a [`Compressor`], with zarrs ([`register!`](super::register)) and
/// implements zarrs' bytes-to-bytes codec traits for it. Only whole chunks decode.
macro_rules! impl_compressor {
    ($codec:ident, v3: $v3:literal, v2: $v2:literal) => {
        $crate::zarr::numcodecs::register!($codec, BytesToBytes,
            v3: $v3, v2: $v2, partial_decode: false
        );

        impl ::zarrs_codec::BytesToBytesCodecTraits for $codec {
            fn into_dyn(
                self: ::std::sync::Arc<Self>,
            ) -> ::std::sync::Arc<dyn ::zarrs_codec::BytesToBytesCodecTraits> {
                self as ::std::sync::Arc<dyn ::zarrs_codec::BytesToBytesCodecTraits>
            }

            fn recommended_concurrency(
                &self,
                _decoded_representation: &::zarrs::array::BytesRepresentation,
            ) -> Result<::zarrs_codec::RecommendedConcurrency, ::zarrs_codec::CodecError> {
                Ok(::zarrs_codec::RecommendedConcurrency::new_maximum(1))
            }

            fn encoded_representation(
                &self,
                decoded_representation: &::zarrs::array::BytesRepresentation,
            ) -> ::zarrs::array::BytesRepresentation {
                $crate::zarr::numcodecs::compressor::encoded_representation(
                    self,
                    decoded_representation,
                )
            }

            fn encode<'a>(
                &self,
                decoded_value: ::zarrs::array::ArrayBytesRaw<'a>,
                _options: &::zarrs_codec::CodecOptions,
            ) -> Result<::zarrs::array::ArrayBytesRaw<'a>, ::zarrs_codec::CodecError> {
                <Self as $crate::zarr::numcodecs::compressor::Compressor>::compress(
                    self,
                    &decoded_value,
                )
                .map(::std::borrow::Cow::Owned)
            }

            fn decode<'a>(
                &self,
                encoded_value: ::zarrs::array::ArrayBytesRaw<'a>,
                decoded_representation: &::zarrs::array::BytesRepresentation,
                _options: &::zarrs_codec::CodecOptions,
            ) -> Result<::zarrs::array::ArrayBytesRaw<'a>, ::zarrs_codec::CodecError> {
                $crate::zarr::numcodecs::compressor::decode(
                    self,
                    &encoded_value,
                    decoded_representation,
                )
            }
        }
    };
}
pub(crate) use impl_compressor;

/// The size of `compressor`'s encoding of `decoded` bytes: at most its
/// [`max_encoded_size`](Compressor::max_encoded_size) of their size, when both are known.
pub(super) fn encoded_representation(
    compressor: &impl Compressor,
    decoded: &BytesRepresentation,
) -> BytesRepresentation {
    decoded
        .size()
        .and_then(|size| compressor.max_encoded_size(size))
        .map_or(
            BytesRepresentation::UnboundedSize,
            BytesRepresentation::BoundedSize,
        )
}

/// Decodes `encoded` by `compressor`, which must give the size of `decoded` when it is fixed.
///
/// # Errors
/// When `compressor` fails.
pub(super) fn decode(
    compressor: &impl Compressor,
    encoded: &[u8],
    decoded: &BytesRepresentation,
) -> Result<ArrayBytesRaw<'static>, CodecError> {
    let expected = match decoded {
        BytesRepresentation::FixedSize(n) => Some(*n),
        _ => None,
    };
    compressor
        .decompress(encoded, expected)
        .map(Cow::Owned)
        .map_err(CodecError::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compressor that stores bytes reversed and may grow them by at most 8.
    struct Reverse;

    impl Compressor for Reverse {
        fn compress(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
            Ok(decoded.iter().rev().copied().collect())
        }

        fn decompress(&self, encoded: &[u8], expected: Option<u64>) -> Result<Vec<u8>, String> {
            match expected {
                Some(n) if n != encoded.len() as u64 => {
                    Err(format!("{} bytes, expected {n}", encoded.len()))
                }
                _ => Ok(encoded.iter().rev().copied().collect()),
            }
        }

        fn max_encoded_size(&self, decoded_size: u64) -> Option<u64> {
            Some(decoded_size + 8)
        }
    }

    #[test]
    fn the_encoded_size_is_bounded_only_when_the_decoded_size_is_known() {
        let fixed = encoded_representation(&Reverse, &BytesRepresentation::FixedSize(100));
        assert_eq!(fixed, BytesRepresentation::BoundedSize(108));
        let unknown = encoded_representation(&Reverse, &BytesRepresentation::UnboundedSize);
        assert_eq!(unknown, BytesRepresentation::UnboundedSize);
    }

    #[test]
    fn decoding_hands_the_compressor_the_size_it_must_give() {
        let out = decode(&Reverse, b"abc", &BytesRepresentation::FixedSize(3)).unwrap();
        assert_eq!(out.as_ref(), b"cba");
        let e = decode(&Reverse, b"abc", &BytesRepresentation::FixedSize(4)).unwrap_err();
        assert!(e.to_string().contains("3 bytes, expected 4"), "{e}");
        let any = decode(&Reverse, b"abc", &BytesRepresentation::UnboundedSize).unwrap();
        assert_eq!(any.as_ref(), b"cba");
    }
}
