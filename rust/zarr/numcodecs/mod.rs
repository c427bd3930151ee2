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

pub mod bitround;
pub mod datetime;
pub mod delta;
pub mod fixedscaleoffset;
pub mod lz4;
pub mod lzma;
pub mod numpy;
pub mod quantize;

use std::borrow::Cow;
use std::sync::Once;

use zarrs::array::DataType;
use zarrs_codec::CodecError;
use zarrs_plugin::{ExtensionAliasesConfig, ExtensionAliasesV2, ExtensionAliasesV3};

use numpy::{NumpyType, Scalar};

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

/// The numpy type of the chunk a filter is handed, which must be its configured `dtype`.
fn check_dtype(codec: &str, dtype: NumpyType, data_type: &DataType) -> Result<(), CodecError> {
    if NumpyType::of(data_type) == Some(dtype) {
        Ok(())
    } else {
        Err(CodecError::Other(format!(
            "{codec}: its dtype {} is not the array's data type {data_type}",
            dtype.name()
        )))
    }
}

/// Maps each element of `input`, of type `from`, through `f` and stores the result as `to`.
fn map_elements(
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
fn dtypes(
    codec: &str,
    dtype: &str,
    astype: Option<&str>,
) -> Result<(NumpyType, NumpyType), zarrs_plugin::PluginCreateError> {
    let parse = |text: &str| {
        NumpyType::parse(text)
            .map_err(|e| zarrs_plugin::PluginCreateError::Other(format!("{codec}: {e}")))
    };
    let dtype = parse(dtype)?;
    let astype = astype.map_or(Ok(dtype), parse)?;
    Ok((dtype, astype))
}

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
