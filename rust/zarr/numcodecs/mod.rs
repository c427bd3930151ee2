//! The numcodecs codecs that zarrs lacks, or decodes other than numcodecs does, registered with
//! zarrs as zarrs registers its own: a codec type implementing `zarrs_codec`'s traits, named by
//! `zarrs_plugin::impl_extension_aliases!` and submitted to `inventory` as a `CodecPluginV2`
//! (the `.zarray` id) and a `CodecPluginV3` (the `numcodecs.*` name zarr-python 3 writes).
//!
//! | codec              | v2 id              | v3 name                       | here                    |
//! |--------------------|--------------------|-------------------------------|-------------------------|
//! | `delta`            | `delta`            | `numcodecs.delta`             | [`delta`]               |
//! | `fixedscaleoffset` | `fixedscaleoffset` | `numcodecs.fixedscaleoffset`  | [`fixedscaleoffset`]    |
//! | `quantize`         | `quantize`         | `numcodecs.quantize`          | [`quantize`]            |
//! | `lz4`              | `lz4`              | `numcodecs.lz4`               | [`lz4`]                 |
//! | `lzma`             | `lzma`             | `numcodecs.lzma`              | [`lzma`]                |
//! | `bitround`         | `bitround`         | (zarrs' `numcodecs.bitround`) | [`bitround`], v2 only   |
//!
//! zarrs provides `adler32`, `bz2`, `fletcher32` and `bitround` (cargo features) and `shuffle`.
//! [`datetime`] adds the v2 dtypes `<M8[unit]` and `<m8[unit]`, which zarrs reads in v3 only.
//!
//! zarrs has a `fixedscaleoffset` of its own, which computes in `float32` where numcodecs
//! computes in `float64`; [`install`] makes it match no name, so that ours decodes.
//!
//! What the codecs share is written once: `register!` makes a codec type a zarrs plugin, and
//! the traits [`filter::Filter`] (delta, fixedscaleoffset, quantize) and
//! [`compressor::Compressor`] (lz4, lzma) hold what each codec does, from which
//! `impl_filter!` and `impl_compressor!` implement zarrs' traits.

pub mod bitround;
pub mod compressor;
pub mod datetime;
pub mod delta;
pub mod filter;
pub mod fixedscaleoffset;
pub mod lz4;
pub mod lzma;
pub mod numpy;
pub mod quantize;

use std::borrow::Cow;
use std::sync::Once;

use zarrs_plugin::{ExtensionAliasesConfig, ExtensionAliasesV2, ExtensionAliasesV3};

/// Takes `fixedscaleoffset` from zarrs' codec, leaving ours ([`fixedscaleoffset`]) the only
/// one that matches its names. Call it before any metadata is read; calls after the first do
/// nothing.
///
/// zarrs looks codecs up in `inventory` order, first match wins, and the order is the link
/// order: there is no priority to give ours. Its runtime registry, which would take precedence,
/// is not consulted when v2 metadata is converted to v3. What zarrs does let a program change
/// is each codec's names (`aliases_v2_mut`, `aliases_v3_mut`): with none, its codec matches
/// nothing, neither when v2 filters are built, nor converted, nor v3 codecs built.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        type Zarrs = zarrs::array::codec::FixedScaleOffsetCodec;
        let none = |aliases: &mut ExtensionAliasesConfig| {
            aliases.default_name = Cow::Borrowed("");
            aliases.aliases_str.clear();
            aliases.aliases_regex.clear();
        };
        none(&mut Zarrs::aliases_v2_mut());
        none(&mut Zarrs::aliases_v3_mut());
    });
}

/// Registers `$codec` with zarrs as zarrs registers its own codecs: names it (v3 `$v3`, v2
/// `$v2`), submits a `CodecPluginV3` and a `CodecPluginV2` that make it (a `Codec::$kind`) with
/// `$codec::new` from its configuration (`{}` when v3 metadata has none), and implements
/// `CodecTraits`: the configuration, kept as read in its field `configuration`, is written
/// back unchanged, and a chunk decodes in part when `$partial_decode`. Never encodes in part.
macro_rules! register {
    (
        $codec:ident, $kind:ident, v3: $v3:literal, v2: $v2:literal,
        partial_decode: $partial_decode:literal
    ) => {
        ::zarrs_plugin::impl_extension_aliases!($codec,
            v3: $v3, [],
            v2: $v2, []
        );

        ::inventory::submit! {
            ::zarrs_codec::CodecPluginV3::new::<$codec>()
        }
        ::inventory::submit! {
            ::zarrs_codec::CodecPluginV2::new::<$codec>()
        }

        impl ::zarrs_codec::CodecTraitsV3 for $codec {
            fn create(
                metadata: &::zarrs_metadata::v3::MetadataV3,
            ) -> Result<::zarrs_codec::Codec, ::zarrs_plugin::PluginCreateError> {
                let configuration = metadata.configuration().cloned().unwrap_or_default();
                Ok(::zarrs_codec::Codec::$kind(::std::sync::Arc::new(
                    Self::new(configuration)?,
                )))
            }
        }

        impl ::zarrs_codec::CodecTraitsV2 for $codec {
            fn create(
                metadata: &::zarrs_metadata::v2::MetadataV2,
            ) -> Result<::zarrs_codec::Codec, ::zarrs_plugin::PluginCreateError> {
                let configuration = metadata.configuration().clone();
                Ok(::zarrs_codec::Codec::$kind(::std::sync::Arc::new(
                    Self::new(configuration)?,
                )))
            }
        }

        impl ::zarrs_codec::CodecTraits for $codec {
            fn as_any(&self) -> &dyn ::std::any::Any {
                self
            }

            fn configuration(
                &self,
                _version: ::zarrs_plugin::ZarrVersion,
                _options: &::zarrs_codec::CodecMetadataOptions,
            ) -> Option<::zarrs_metadata::Configuration> {
                Some(self.configuration.clone())
            }

            fn partial_decoder_capability(&self) -> ::zarrs_codec::PartialDecoderCapability {
                ::zarrs_codec::PartialDecoderCapability {
                    partial_read: $partial_decode,
                    partial_decode: $partial_decode,
                }
            }

            fn partial_encoder_capability(&self) -> ::zarrs_codec::PartialEncoderCapability {
                ::zarrs_codec::PartialEncoderCapability {
                    partial_encode: false,
                }
            }
        }
    };
}
pub(crate) use register;

#[cfg(test)]
mod tests {
    use zarrs::array::CodecChain;
    use zarrs_metadata::v3::MetadataV3;

    #[test]
    fn ours_is_the_fixedscaleoffset_zarrs_builds() {
        super::install();
        let codecs: Vec<MetadataV3> = serde_json::from_str(
            r#"[{"name": "numcodecs.fixedscaleoffset",
                 "configuration": {"offset": 0.123, "scale": 1000, "dtype": "<f8", "astype": "|u1"}},
                {"name": "bytes"}]"#,
        )
        .unwrap();
        // zarrs' own refuses "|u1"; ours takes it.
        let chain = CodecChain::from_metadata(&codecs).unwrap();
        let codec = &chain.array_to_array_codecs()[0];
        assert!(codec
            .as_any()
            .downcast_ref::<super::fixedscaleoffset::FixedScaleOffsetCodec>()
            .is_some());
    }
}
