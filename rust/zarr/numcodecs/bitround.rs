//! numcodecs' `bitround` filter in Zarr v2 (`.zarray` id `bitround`). zarrs provides the codec
//! (the `bitround` feature) for v3 only, as `bitround` and `numcodecs.bitround`; this registers
//! zarrs' codec for the v2 id too. Like numcodecs, it rounds only when encoding: a chunk
//! decodes as it is stored.

use std::sync::Arc;

use zarrs::array::codec::{BitroundCodec, BitroundCodecConfiguration};
use zarrs_codec::{Codec, CodecPluginV2, CodecTraitsV2};
use zarrs_metadata::v2::MetadataV2;
use zarrs_plugin::PluginCreateError;

/// The v2 name of zarrs' [`BitroundCodec`] (whose v3 name the array's metadata gets).
#[derive(Debug)]
pub struct BitroundV2;

zarrs_plugin::impl_extension_aliases!(BitroundV2, v2: "bitround");

inventory::submit! {
    CodecPluginV2::new::<BitroundV2>()
}

impl CodecTraitsV2 for BitroundV2 {
    fn create(metadata: &MetadataV2) -> Result<Codec, PluginCreateError> {
        let configuration: BitroundCodecConfiguration = metadata.to_typed_configuration()?;
        Ok(Codec::ArrayToArray(Arc::new(
            BitroundCodec::new_with_configuration(&configuration)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use zarrs_codec::Codec;
    use zarrs_metadata::v2::MetadataV2;
    use zarrs_plugin::ExtensionName;

    #[test]
    fn v2_bitround_is_zarrs_codec_under_its_v3_name() {
        let v2: MetadataV2 = serde_json::from_str(r#"{"id": "bitround", "keepbits": 10}"#).unwrap();
        let codec = Codec::from_metadata(&v2).unwrap();
        assert_eq!(codec.name_v3().as_deref(), Some("bitround"));
        let config = codec
            .configuration_v3(&zarrs_codec::CodecMetadataOptions::default())
            .unwrap();
        assert_eq!(config.get("keepbits"), Some(&serde_json::json!(10)));
    }
}
